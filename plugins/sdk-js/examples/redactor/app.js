// `redactor` in JavaScript: masks e-mail addresses, bearer tokens and IPv4
// addresses in record values, byte for byte like the Rust redactor
// (plugins/redactor/src/lib.rs, whose documentation states the rules).
//
// The scan is a line-by-line port of the Rust one, run over the decoded
// string's UTF-16 code units instead of UTF-8 bytes. That gives the same
// matches: every class the scanners test is ASCII, a non-ASCII character is
// one or more units (bytes) >= 0x80 in either encoding and never matches, and
// every fixed-offset look-behind (`\n`, `\uXXXX`) only succeeds on an
// all-ASCII suffix, which is the same in both. Candidates are found with
// native searches (indexOf, regular expressions) rather than byte loops, as
// the engine is interpreted inside the component. Stateless.
//
// Configuration: empty (all three maskers) or a comma-separated list of
// `email`, `ipv4`, `bearer`. A value that is not UTF-8 is rejected.

import { Processor, Output, Reject, ConfigError, exportProcessor, rustTrim, rustDebug } from "../../logstream-sdk.js";

const EMAIL_MASK = "[email]";
const IPV4_MASK = "[ipv4]";
const TOKEN_MASK = "[token]";

const BACKSLASH = 0x5c, DOT = 0x2e, UNDERSCORE = 0x5f;

const isDigit = (c) => c >= 0x30 && c <= 0x39;
const isAlpha = (c) => (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
const isAlnum = (c) => isDigit(c) || isAlpha(c);
const isHex = (c) => isDigit(c) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66);
const isWord = (c) => isAlnum(c) || c === UNDERSCORE;
// . _ % + -
const isLocal = (c) => isAlnum(c) || c === 0x2e || c === 0x5f || c === 0x25 || c === 0x2b || c === 0x2d;
const isLabel = (c) => isAlnum(c) || c === 0x2d;
// . _ ~ + / = -
const isToken = (c) => isAlnum(c) || c === 0x2e || c === 0x5f || c === 0x7e || c === 0x2b || c === 0x2f || c === 0x3d || c === 0x2d;

/** Builds the redacted text lazily: nothing is built until the first replacement. */
class Rewriter {
  constructor(b) {
    this.b = b;
    this.parts = null;
    this.copied = 0; // b[..copied] has been handled
  }

  replace(start, end, mask) {
    if (this.parts === null) this.parts = [];
    this.parts.push(this.b.slice(this.copied, start), mask);
    this.copied = end;
  }

  /** The new text, or null when nothing was replaced. */
  finish() {
    if (this.parts === null) return null;
    this.parts.push(this.b.slice(this.copied));
    return this.parts.join("");
  }
}

/** Whether b[..=k] ends with an odd number of backslashes. */
function escapingBackslashAt(b, k) {
  let run = 0;
  while (k - run >= 0 && b.charCodeAt(k - run) === BACKSLASH) run++;
  return run % 2 === 1;
}

/** Whether b[..p] ends with `\n \r \t \b \f` or `\uXXXX` (a word boundary). */
function endsWithEscape(b, p) {
  if (p >= 2 && b.charCodeAt(p - 2) === BACKSLASH) {
    const c = b.charCodeAt(p - 1);
    if ((c === 0x6e || c === 0x72 || c === 0x74 || c === 0x62 || c === 0x66) && escapingBackslashAt(b, p - 2)) return true;
  }
  return (
    p >= 6 && b.charCodeAt(p - 6) === BACKSLASH && b.charCodeAt(p - 5) === 0x75 &&
    isHex(b.charCodeAt(p - 4)) && isHex(b.charCodeAt(p - 3)) && isHex(b.charCodeAt(p - 2)) && isHex(b.charCodeAt(p - 1)) &&
    escapingBackslashAt(b, p - 6)
  );
}

function wordBefore(b, p, dot) {
  if (p === 0) return false;
  const c = b.charCodeAt(p - 1);
  if (dot && c === DOT) return true;
  return isWord(c) && !endsWithEscape(b, p);
}

// ---------------------------------------------------------------- e-mail --

/** End of the longest domain at `start`: 2+ labels, the last 2+ letters; -1 if none. */
function domainEnd(b, start) {
  let best = -1;
  let labels = 0;
  let j = start;
  for (;;) {
    const labelStart = j;
    let alpha = true;
    while (j < b.length && isLabel(b.charCodeAt(j))) {
      if (!isAlpha(b.charCodeAt(j))) alpha = false;
      j++;
    }
    if (j === labelStart) break;
    labels++;
    if (labels >= 2 && j - labelStart >= 2 && alpha) best = j;
    if (j < b.length && b.charCodeAt(j) === DOT) j++;
    else break;
  }
  return best;
}

/** Start of the local part ending at `at`, not before `floor`; -1 if none. */
function localStart(b, at, floor) {
  let s = at;
  while (s > floor && isLocal(b.charCodeAt(s - 1))) s--;
  if (s > 0 && b.charCodeAt(s - 1) === BACKSLASH && escapingBackslashAt(b, s - 1) && s < at) {
    if (b.charCodeAt(s) === 0x75 && at - s >= 5 && isHex(b.charCodeAt(s + 1)) && isHex(b.charCodeAt(s + 2)) && isHex(b.charCodeAt(s + 3)) && isHex(b.charCodeAt(s + 4))) s += 5;
    else s += 1;
  }
  while (s < at && b.charCodeAt(s) === DOT) s++;
  return s < at ? s : -1;
}

export function maskEmails(b) {
  const w = new Rewriter(b);
  let i = 0;
  for (;;) {
    const at = b.indexOf("@", i);
    if (at < 0) break;
    i = at + 1;
    const start = localStart(b, at, w.copied);
    if (start < 0) continue;
    const end = domainEnd(b, at + 1);
    if (end < 0) continue;
    w.replace(start, end, EMAIL_MASK);
    i = end;
  }
  return w.finish();
}

// ---------------------------------------------------------------- bearer --

const WORD_LEN = 6;
// The word `bearer` in any ASCII case (Rust: `eq_ignore_ascii_case`); no `i`
// flag, so that no non-ASCII letter can fold into it.
const BEARER = /[bB][eE][aA][rR][eE][rR]/g;

export function maskBearerTokens(b) {
  const w = new Rewriter(b);
  const n = b.length;
  let i = 0;
  while (i + WORD_LEN < n) {
    // Rust walks every `b`/`B` of b[i .. n - 6] and compares the six letters
    // there: the same as the next occurrence of the word starting before n - 6.
    BEARER.lastIndex = i;
    const m = BEARER.exec(b);
    if (m === null || m.index >= n - WORD_LEN) break;
    const start = m.index;
    i = start + 1;
    const afterWord = start + WORD_LEN;
    if (wordBefore(b, start, false)) continue;
    let j = afterWord;
    while (j < n && (b.charCodeAt(j) === 0x20 || b.charCodeAt(j) === 0x09)) j++;
    if (j === afterWord) continue;
    const tokenStart = j;
    for (;;) {
      if (j < n && isToken(b.charCodeAt(j))) j++;
      else if (j + 1 < n && b.charCodeAt(j) === BACKSLASH && b.charCodeAt(j + 1) === 0x2f) j += 2;
      else break;
    }
    if (j === tokenStart) continue;
    w.replace(tokenStart, j, TOKEN_MASK);
    i = j;
  }
  return w.finish();
}

// ------------------------------------------------------------------ IPv4 --

/** End of one octet (1-3 digits, at most 255) at `j`; -1 if none. */
function octetEnd(b, j) {
  let digits = 0;
  while (digits < 3 && j + digits < b.length && isDigit(b.charCodeAt(j + digits))) digits++;
  if (digits === 0) return -1;
  const end = j + digits;
  if (end < b.length && isDigit(b.charCodeAt(end))) return -1;
  let value = 0;
  for (let k = j; k < end; k++) value = value * 10 + (b.charCodeAt(k) - 0x30);
  return value <= 255 ? end : -1;
}

function ipv4End(b, start) {
  if (wordBefore(b, start, true)) return -1;
  let j = octetEnd(b, start);
  if (j < 0) return -1;
  for (let k = 0; k < 3; k++) {
    if (j >= b.length || b.charCodeAt(j) !== DOT) return -1;
    j = octetEnd(b, j + 1);
    if (j < 0) return -1;
  }
  if (j < b.length) {
    const c = b.charCodeAt(j);
    if (isWord(c)) return -1;
    if (c === DOT && j + 1 < b.length && isWord(b.charCodeAt(j + 1))) return -1;
  }
  return j;
}

const CANDIDATE = /[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]/g;

export function maskIpv4(b) {
  const w = new Rewriter(b);
  const n = b.length;
  let i = 0;
  for (;;) {
    // Rust tries ipv4_end at every digit; it can only succeed where four
    // dot-separated runs of 1-3 digits start, so jump to the next such place.
    CANDIDATE.lastIndex = i;
    const m = CANDIDATE.exec(b);
    if (m === null) break;
    const start = m.index;
    const end = ipv4End(b, start);
    if (end >= 0) {
      w.replace(start, end, IPV4_MASK);
      i = end;
    } else {
      i = start + 1;
    }
  }
  return w.finish();
}

export class Redactor extends Processor {
  static NAME = "redactor";
  static STATE_VERSION = 1;

  configure(config) {
    config = rustTrim(config);
    this.email = this.ipv4 = this.bearer = config === "";
    if (config === "") return;
    for (const raw of config.split(",")) {
      const name = rustTrim(raw);
      if (name === "email") this.email = true;
      else if (name === "ipv4") this.ipv4 = true;
      else if (name === "bearer") this.bearer = true;
      else if (name === "") throw new ConfigError(`the redactor configuration ${rustDebug(config)} has an empty entry in its comma list`);
      else throw new ConfigError(`the redactor knows the maskers \`email\`, \`ipv4\` and \`bearer\`, not ${rustDebug(name)}`);
    }
  }

  /** The redacted text, or null when nothing was masked. */
  redact(b) {
    let changed = null;
    if (this.email) {
      const m = maskEmails(b);
      if (m !== null) b = changed = m;
    }
    if (this.bearer) {
      const m = maskBearerTokens(b);
      if (m !== null) b = changed = m;
    }
    if (this.ipv4) {
      const m = maskIpv4(b);
      if (m !== null) b = changed = m;
    }
    return changed;
  }

  process(record, emit) {
    const text = record.valueText();
    if (text === null) throw new Reject("the value is not valid UTF-8 text");
    const masked = this.redact(text);
    const out = Output.copyOf(record);
    if (masked !== null) out.withValue(masked);
    emit(out);
  }
}

export const processor = exportProcessor(Redactor);
