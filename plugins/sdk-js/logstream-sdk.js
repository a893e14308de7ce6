// LogStream JavaScript SDK: a thin layer over the bindings componentize-js
// generates for the `log-processor` world (wit/processor.wit).
//
// A processor is a class:
//
//     import { Processor, Output, Reject, Settings, exportProcessor } from "../../logstream-sdk.js";
//
//     class Counter extends Processor {
//       static NAME = "counter";        // in configuration error messages
//       static STATE_VERSION = 1;       // version of the snapshot format
//       configure(config) {             // throw ConfigError (Settings does)
//         const settings = new Settings(config, Counter.NAME);
//         this.every = settings.takeInt("every", 100, 1);
//         settings.finish();
//       }
//       initialState() { return { records: 0 }; }   // any JSON value
//       process(record, emit) {         // throw new Reject(reason) to dead-letter
//         this.state.records += 1;
//         if (this.state.records % this.every === 0) emit(new Output(String(this.state.records), { key: "count" }));
//       }
//     }
//     export const processor = exportProcessor(Counter);   // the world's export
//
// The SDK owns the state: `this.state` is what `initialState()` returns; the
// SDK snapshots it as compact JSON with sorted keys, `{"state":…,"version":N}`
// (equal states give byte-identical snapshots) and restores it. Keep every bit
// of state that affects future outputs in `this.state`, and only JSON values
// in it (plain objects, arrays, strings, finite numbers, booleans, null).
//
// A record is processed atomically as far as outputs go: when `process`
// throws `Reject` its outputs are dropped and the record is dead-lettered;
// any other exception fails the whole batch. Changes made to `this.state`
// before throwing are NOT rolled back (as in the Rust SDK): validate first,
// then mutate.

import { log as hostLog } from "logstream:processor/host-log@0.1.0";

const UTF8 = new TextEncoder();
const UTF8_STRICT = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }); // keep a leading U+FEFF, as Rust does
const UTF8_LOSSY = new TextDecoder("utf-8", { ignoreBOM: true });

/** Throw from `process` to refuse the record (dead-letter topic). */
export class Reject extends Error {
  constructor(reason) {
    super(reason);
    this.name = "Reject";
    this.reason = String(reason);
  }
}

/** Throw from `configure` when the configuration is not acceptable. */
export class ConfigError extends Error {
  constructor(message) {
    super(message);
    this.name = "ConfigError";
  }
}

/** A failed call as the component returns it: `payload` is the WIT
 * `processor-error` variant (componentize-js turns a thrown value with a
 * `payload` into the `err` case of the result). */
export class ProcessorError extends Error {
  constructor(payload) {
    super(payload.tag + ": " + (typeof payload.val === "string" ? payload.val : payload.val.reason));
    this.name = "ProcessorError";
    this.payload = payload;
  }
}

export class Header {
  constructor(key, value) {
    this.key = key; // string
    this.value = value; // Uint8Array (or a string, for output headers)
  }
}

/** One input record. `value` is a Uint8Array, `key` a Uint8Array or null,
 * `offset` and `timestampMs` BigInts. The byte arrays are views of the
 * batch's buffer: copy them to keep them past `process`. */
export class Record {
  constructor(partition, offset, timestampMs, key, value, headers) {
    this.partition = partition;
    this.offset = offset;
    this.timestampMs = timestampMs;
    this.key = key;
    this.value = value;
    this.headers = headers;
  }

  /** The value as text, or null when it is not valid UTF-8 (Rust's `value_str`). */
  valueText() {
    try {
      return UTF8_STRICT.decode(this.value);
    } catch {
      return null;
    }
  }

  /** The value of the first header named `key`, or null (as the Rust SDK). */
  header(key) {
    for (const h of this.headers) if (h.key === key) return h.value;
    return null;
  }
}

/** One record to produce. `value`/`key`: string (UTF-8) or Uint8Array;
 * `topic` undefined/null is the processor's output topic. */
export class Output {
  constructor(value, { key = null, topic = null, headers = [] } = {}) {
    this.value = asBytes(value);
    this.key = key == null ? null : asBytes(key);
    this.topic = topic;
    this.headers = headers;
  }

  /** The record's key, value and headers, to the default topic (Rust's `Output::copy_of`). */
  static copyOf(record) {
    return new Output(record.value, {
      key: record.key,
      headers: record.headers.map((h) => new Header(h.key, h.value)),
    });
  }

  withValue(value) {
    this.value = asBytes(value);
    return this;
  }
}

function asBytes(v) {
  if (typeof v === "string") return UTF8.encode(v);
  if (v instanceof Uint8Array) return v;
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  throw new TypeError(`expected a string or a Uint8Array, got ${Object.prototype.toString.call(v)}`);
}

// Rust's `str::trim`: the Unicode White_Space characters (JS's `trim` also
// strips U+FEFF and keeps U+0085).
const RUST_SPACE = /^[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+|[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$/g;
export function rustTrim(s) {
  return s.replace(RUST_SPACE, "");
}

/** Rust's `{:?}` of a string, for the common cases (quotes, backslashes,
 * `\t \r \n \0`, other control characters as `\u{…}`). */
export function rustDebug(s) {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\n") out += "\\n";
    else if (c === 0) out += "\\0";
    else if (c < 0x20 || (c >= 0x7f && c < 0xa0)) out += `\\u{${c.toString(16)}}`;
    else out += ch;
  }
  return out + '"';
}

/** `key=value,key=value` configuration with the Rust SDK's rules and
 * messages (plugins/sdk/src/config.rs). */
export class Settings {
  constructor(config, processor) {
    this.processor = processor;
    this.values = new Map();
    for (const raw of config.split(",")) {
      const pair = rustTrim(raw);
      if (!pair) continue;
      const eq = pair.indexOf("=");
      if (eq < 0) throw new ConfigError(`${processor} expects settings as \`key=value\`, got ${rustDebug(pair)}`);
      const key = rustTrim(pair.slice(0, eq));
      if (this.values.has(key)) throw new ConfigError(`${processor} got the setting \`${key}\` twice`);
      this.values.set(key, rustTrim(pair.slice(eq + 1)));
    }
  }

  /** A whole-number setting (Rust's u64 parse: ASCII digits, optional
   * leading `+`), `dflt` when absent, at least `min`. Returns a number when
   * it is a safe integer, else a BigInt. */
  takeInt(key, dflt, min) {
    if (!this.values.has(key)) return dflt;
    const text = this.values.get(key);
    this.values.delete(key);
    const digits = text.startsWith("+") ? text.slice(1) : text;
    if (/^[0-9]+$/.test(digits)) {
      const n = BigInt(digits);
      if (n >= BigInt(min) && n < 1n << 64n) return n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n;
    }
    throw new ConfigError(`\`${key}\` must be a whole number of at least ${min}, got ${rustDebug(text)}`);
  }

  /** A string setting, or null when absent. */
  takeStr(key) {
    if (!this.values.has(key)) return null;
    const v = this.values.get(key);
    this.values.delete(key);
    return v;
  }

  /** Refuse any setting nobody took (the smallest key first, as Rust's BTreeMap). */
  finish() {
    if (this.values.size === 0) return;
    const key = [...this.values.keys()].sort(compareCodePoints)[0];
    throw new ConfigError(`${this.processor} has no setting \`${key}\``);
  }
}

// Rust orders strings by UTF-8 bytes, i.e. by code points; JS's default sort
// compares UTF-16 code units, which differs above U+FFFF.
function compareCodePoints(a, b) {
  const x = [...a], y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d) return d;
  }
  return x.length - y.length;
}

/** Base class of a processor; see the top of this file. */
export class Processor {
  static NAME = "processor";
  static STATE_VERSION = 1;

  configure(config) {
    if (rustTrim(config)) throw new ConfigError(`${this.constructor.NAME} takes no configuration`);
  }

  initialState() {
    return null;
  }

  process(record, emit) {
    throw new Error("process is not implemented");
  }

  /** Turn the state of a snapshot of another version into this version's,
   * or throw to refuse it. Default: refuse. */
  migrate(foundVersion, state) {
    throw new Error(`state version ${foundVersion} cannot be migrated to ${this.constructor.STATE_VERSION}`);
  }
}

const LEVELS = new Set(["trace", "debug", "info", "warn", "error"]);

/** Log through the host: level is trace, debug, info, warn or error. */
export function log(level, message) {
  level = String(level).toLowerCase();
  if (!LEVELS.has(level)) throw new TypeError(`unknown log level ${level}`);
  hostLog(level, String(message));
}

/** Canonical JSON: sorted keys (by code point), no spaces; refuses what is
 * not JSON (undefined, functions, BigInt, NaN/Infinity, symbols, cycles). */
export function canonicalJson(value) {
  const seen = new Set();
  const walk = (v, path) => {
    if (v === null) return "null";
    switch (typeof v) {
      case "boolean":
        return v ? "true" : "false";
      case "string":
        return JSON.stringify(v);
      case "number":
        if (!Number.isFinite(v)) throw new TypeError(`${path} is ${v}, not a JSON number`);
        return JSON.stringify(v);
      case "object": {
        if (seen.has(v)) throw new TypeError(`${path} is a cycle`);
        seen.add(v);
        let out;
        if (Array.isArray(v)) {
          out = "[" + v.map((x, i) => walk(x, `${path}[${i}]`)).join(",") + "]";
        } else {
          const proto = Object.getPrototypeOf(v);
          if (proto !== Object.prototype && proto !== null) throw new TypeError(`${path} is not a plain object`);
          const keys = Object.keys(v).sort(compareCodePoints);
          out = "{" + keys.map((k) => JSON.stringify(k) + ":" + walk(v[k], `${path}.${k}`)).join(",") + "}";
        }
        seen.delete(v);
        return out;
      }
      default:
        throw new TypeError(`${path} is a ${typeof v}, not a JSON value`);
    }
  };
  return walk(value, "state");
}

/** The snapshot format: `{"state":…,"version":N}` as canonical JSON, UTF-8. */
export function encodeState(version, state) {
  return UTF8.encode(canonicalJson({ state, version }));
}

function failed(message) {
  return new ProcessorError({ tag: "failed", val: message });
}

function incompatible(found, expected, reason) {
  return new ProcessorError({ tag: "incompatible-state", val: { found, expected, reason } });
}

function describe(e) {
  return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
}

/** The object componentize-js exports as the world's `processor` interface,
 * driving one instance of `cls` per component instance. Bind it as
 * `export const processor = exportProcessor(MyProcessor);` in the module
 * you build. */
export function exportProcessor(cls) {
  let inner = null;
  const configured = () => {
    if (inner === null) throw failed("the processor was used before configure");
    return inner;
  };

  return {
    stateVersion() {
      return cls.STATE_VERSION;
    },

    configure(config) {
      if (inner !== null) throw failed("configure was called twice on one instance");
      const p = new cls();
      try {
        p.configure(config);
        p.state = p.initialState();
      } catch (e) {
        if (e instanceof ConfigError) throw new ProcessorError({ tag: "invalid-config", val: e.message });
        throw failed(`configure failed: ${describe(e)}`);
      }
      inner = p;
    },

    processBatch(batch) {
      const p = configured();
      // componentize-js hands `list<u8>` over as a typed array that is not
      // always `instanceof Uint8Array` here: view it as one.
      const data = asBytes(batch.data);
      const size = data.length;
      const hspans = batch.headers;
      const records = batch.records;
      const outputs = [];
      const rejections = [];
      let pending = [];
      const emit = (o) => {
        if (!(o instanceof Output)) throw new TypeError("emit takes an Output");
        pending.push(o);
      };
      const slice = (s, what, index) => {
        if (s.offset + s.len > size) throw failed(`the host sent a malformed batch: record ${index}'s ${what} is out of bounds`);
        return data.subarray(s.offset, s.offset + s.len);
      };
      for (let index = 0; index < records.length; index++) {
        const r = records[index];
        const headers = [];
        if (r.firstHeader + r.headerCount > hspans.length) throw failed(`the host sent a malformed batch: record ${index}'s headers are out of bounds`);
        for (let h = r.firstHeader; h < r.firstHeader + r.headerCount; h++) {
          const hs = hspans[h];
          headers.push(new Header(UTF8_LOSSY.decode(slice(hs.key, "header key", index)), slice(hs.value, "header value", index)));
        }
        const record = new Record(
          r.partition, r.offset, r.timestampMs,
          r.key == null ? null : slice(r.key, "key", index),
          slice(r.value, "value", index),
          headers,
        );
        try {
          p.process(record, emit);
        } catch (e) {
          if (e instanceof Reject) {
            pending = [];
            rejections.push({ inputIndex: index, reason: e.reason });
            continue;
          }
          throw failed(`process failed on record ${index}: ${describe(e)}`);
        }
        for (const o of pending) {
          outputs.push({
            inputIndex: index,
            topic: o.topic == null ? undefined : o.topic,
            key: o.key == null ? undefined : o.key,
            value: o.value,
            headers: o.headers.map((h) => ({ key: h.key, value: asBytes(h.value) })),
          });
        }
        pending = [];
      }
      return { outputs, rejections };
    },

    snapshot() {
      const p = configured();
      try {
        return encodeState(cls.STATE_VERSION, p.state);
      } catch (e) {
        throw failed(`the state is not JSON: ${describe(e)}`);
      }
    },

    restore(bytes) {
      const p = configured();
      bytes = asBytes(bytes);
      const expected = cls.STATE_VERSION;
      let version, value;
      try {
        const doc = JSON.parse(UTF8_STRICT.decode(bytes));
        if (doc === null || typeof doc !== "object" || Array.isArray(doc)) throw new Error("not an object");
        if (!("state" in doc)) throw new Error("no `state`");
        version = doc.version;
        value = doc.state;
        if (!Number.isInteger(version)) throw new Error("`version` is not an integer");
      } catch (e) {
        if (bytes.length >= 8 && bytes[0] === 0x4c && bytes[1] === 0x53 && bytes[2] === 0x53 && bytes[3] === 0x31) {
          // A Rust SDK snapshot: `LSS1`, then the state version (u32 LE).
          const found = (bytes[4] | (bytes[5] << 8) | (bytes[6] << 16) | (bytes[7] << 24)) >>> 0;
          throw incompatible(found, expected, "a Rust SDK snapshot, which the JavaScript SDK cannot read");
        }
        throw incompatible(undefined, expected, `not a JavaScript SDK snapshot: ${e instanceof Error ? e.message : e}`);
      }
      if (version !== expected) {
        try {
          value = p.migrate(version, value);
        } catch (e) {
          throw incompatible(version >= 0 && version < 2 ** 32 ? version : undefined, expected, e instanceof Error ? e.message : String(e));
        }
      }
      p.state = value;
    },
  };
}
