// Unit tests of the JavaScript SDK and the JavaScript redactor, under Node:
//   node --import ./plugins/sdk-js/tests/register.mjs --test plugins/sdk-js/tests/test_sdk.mjs
import { test } from "node:test";
import assert from "node:assert/strict";

import {
  Settings, ConfigError, Processor, Output, Reject, Header, ProcessorError,
  exportProcessor, encodeState, canonicalJson, rustTrim, rustDebug, log,
} from "../logstream-sdk.js";
import { Redactor, processor as redactorExport } from "../examples/redactor/app.js";
import { logged } from "./host-stub.mjs";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** A packed record-batch as the host sends it. */
function batch(records) {
  const chunks = [];
  let size = 0;
  const put = (bytes) => {
    if (typeof bytes === "string") bytes = enc.encode(bytes);
    const span = { offset: size, len: bytes.length };
    chunks.push(bytes);
    size += bytes.length;
    return span;
  };
  const headers = [];
  const metas = records.map((r, i) => {
    const first = headers.length;
    for (const [k, v] of r.headers ?? []) headers.push({ key: put(k), value: put(v) });
    return {
      partition: 0, offset: BigInt(i), timestampMs: 1700000000000n + BigInt(i),
      key: r.key == null ? undefined : put(r.key),
      value: put(r.value),
      firstHeader: first, headerCount: headers.length - first,
    };
  });
  const data = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) { data.set(c, at); at += c.length; }
  return { data, records: metas, headers };
}

function payloadOf(fn) {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ProcessorError, `expected a ProcessorError, got ${e}`);
    return e.payload;
  }
  assert.fail("expected a ProcessorError");
}

function configError(fn) {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${e}`);
    return e.message;
  }
  assert.fail("expected a ConfigError");
}

// ------------------------------------------------------------- Settings --

test("settings parse like the Rust SDK", () => {
  const s = new Settings(" a=1 , b = x ,, ", "p");
  assert.equal(s.takeInt("a", 5, 1), 1);
  assert.equal(s.takeInt("missing", 5, 1), 5);
  assert.equal(s.takeStr("b"), "x");
  assert.equal(s.takeStr("b"), null);
  s.finish();
  assert.equal(new Settings("", "p").values.size, 0);
  const t = new Settings("n=+7,big=18446744073709551615,eq=a=b", "p");
  assert.equal(t.takeInt("n", 0, 0), 7);
  assert.equal(t.takeInt("big", 0, 0), 18446744073709551615n);
  assert.equal(t.takeStr("eq"), "a=b");
});

test("settings errors have the Rust SDK's texts", () => {
  assert.equal(configError(() => new Settings("a", "p")), 'p expects settings as `key=value`, got "a"');
  assert.equal(configError(() => new Settings('x"y\\z\t', "p")), 'p expects settings as `key=value`, got "x\\"y\\\\z"');
  assert.equal(configError(() => new Settings("a=1, a =2", "p")), "p got the setting `a` twice");
  const s = new Settings("a=0,c=1,b=2", "p");
  assert.equal(configError(() => s.takeInt("a", 5, 1)), '`a` must be a whole number of at least 1, got "0"');
  for (const bad of ["-1", "1.5", "x", "", "18446744073709551616", "1_000", " ", "٣"]) {
    const t = new Settings(`n=${bad}`, "p");
    assert.match(configError(() => t.takeInt("n", 1, 0)), /^`n` must be a whole number of at least 0, got "/);
  }
  assert.equal(configError(() => s.finish()), "p has no setting `b`");
});

test("trim and debug follow Rust", () => {
  assert.equal(rustTrim("\u0085 x \u3000"), "x");
  assert.equal(rustTrim("\ufeffx"), "\ufeffx"); // not White_Space in Rust
  assert.equal(rustDebug('a"\n\0\u0001é'), '"a\\"\\n\\0\\u{1}é"');
});

// ------------------------------------------------------------- runtime --

class Counter extends Processor {
  static NAME = "counter";
  static STATE_VERSION = 2;
  configure(config) {
    const s = new Settings(config, Counter.NAME);
    this.step = s.takeInt("step", 1, 1);
    s.finish();
  }
  initialState() {
    return { count: 0, seen: {} };
  }
  process(record, emit) {
    emit(new Output(String(this.state.count), { key: "k", topic: "t", headers: [new Header("h", "v")] }));
    const text = record.valueText();
    if (text === "") throw new Reject("empty value");
    if (text === "boom") throw new Error("kaput");
    this.state.count += this.step;
    this.state.seen[text] = (this.state.seen[text] ?? 0) + 1;
  }
  migrate(found, state) {
    if (found === 1) return { count: state, seen: {} };
    return super.migrate(found, state);
  }
}

test("outputs are tagged, and a rejected record's outputs are dropped", () => {
  const p = exportProcessor(Counter);
  assert.equal(p.stateVersion(), 2);
  p.configure("step=2");
  const out = p.processBatch(batch([{ value: "a" }, { value: "" }, { value: "b" }]));
  assert.deepEqual(out.rejections, [{ inputIndex: 1, reason: "empty value" }]);
  assert.deepEqual(out.outputs.map((o) => [o.inputIndex, dec.decode(o.value), o.topic, dec.decode(o.key)]),
    [[0, "0", "t", "k"], [2, "2", "t", "k"]]);
  assert.deepEqual(out.outputs[0].headers.map((h) => [h.key, dec.decode(h.value)]), [["h", "v"]]);
});

test("other exceptions fail the batch; calls out of order fail", () => {
  const p = exportProcessor(Counter);
  assert.deepEqual(payloadOf(() => p.snapshot()), { tag: "failed", val: "the processor was used before configure" });
  assert.equal(payloadOf(() => p.configure("step=0")).tag, "invalid-config");
  assert.equal(payloadOf(() => p.configure("nope=1")).val, "counter has no setting `nope`");
  p.configure("");
  assert.equal(payloadOf(() => p.configure("")).val, "configure was called twice on one instance");
  const e = payloadOf(() => p.processBatch(batch([{ value: "a" }, { value: "boom" }])));
  assert.deepEqual(e, { tag: "failed", val: "process failed on record 1: Error: kaput" });
  const bad = batch([{ value: "a" }]);
  bad.records[0].value.len = 99;
  assert.equal(payloadOf(() => p.processBatch(bad)).tag, "failed");
});

test("snapshots are canonical JSON and byte-identical for equal states", () => {
  const a = exportProcessor(Counter), b = exportProcessor(Counter);
  a.configure(""); b.configure("");
  a.processBatch(batch([{ value: "x" }, { value: "y" }]));
  b.processBatch(batch([{ value: "y" }, { value: "x" }]));
  const snap = a.snapshot();
  assert.deepEqual(snap, b.snapshot());
  assert.equal(dec.decode(snap), '{"state":{"count":2,"seen":{"x":1,"y":1}},"version":2}');
  assert.equal(canonicalJson({ b: [1, "é", null, true], a: { "😀": 1, "\uffff": 2 } }), '{"a":{"\uffff":2,"😀":1},"b":[1,"é",null,true]}');
  for (const bad of [NaN, Infinity, undefined, () => 1, 1n, new Map(), [undefined]]) {
    assert.throws(() => canonicalJson({ x: bad }), TypeError);
  }
  const cyclic = {}; cyclic.self = cyclic;
  assert.throws(() => canonicalJson(cyclic), TypeError);
  a.processBatch(batch([{ value: "nan" }]));
  const p = exportProcessor(class extends Processor { initialState() { return { x: NaN }; } });
  p.configure("");
  assert.match(payloadOf(() => p.snapshot()).val, /^the state is not JSON: /);
});

test("restore continues identically, migrates, and refuses what it cannot read", () => {
  const whole = exportProcessor(Counter);
  whole.configure("");
  whole.processBatch(batch([{ value: "a" }, { value: "b" }, { value: "c" }]));
  const first = exportProcessor(Counter);
  first.configure("");
  first.processBatch(batch([{ value: "a" }]));
  const second = exportProcessor(Counter);
  second.configure("");
  second.restore(first.snapshot());
  second.processBatch(batch([{ value: "b" }, { value: "c" }]));
  assert.deepEqual(second.snapshot(), whole.snapshot());

  const p = exportProcessor(Counter);
  p.configure("");
  p.restore(enc.encode('{"state":5,"version":1}')); // migrated
  assert.equal(dec.decode(p.snapshot()), '{"state":{"count":5,"seen":{}},"version":2}');
  const before = p.snapshot();
  const refusals = [
    [enc.encode('{"state":5,"version":3}'), 3, "state version 3 cannot be migrated to 2"],
    [enc.encode("not json"), undefined, null],
    [enc.encode('{"version":2}'), undefined, null],
    [enc.encode('{"state":1,"version":"2"}'), undefined, null],
    [enc.encode("[]"), undefined, null],
    [new Uint8Array([0xff, 0xfe]), undefined, null],
    [new Uint8Array([0x4c, 0x53, 0x53, 0x31, 7, 0, 0, 0, 1]), 7, "a Rust SDK snapshot, which the JavaScript SDK cannot read"],
    [enc.encode('{"state":1,"version":-1}'), undefined, "state version -1 cannot be migrated to 2"],
  ];
  for (const [bytes, found, reason] of refusals) {
    const e = payloadOf(() => p.restore(bytes));
    assert.equal(e.tag, "incompatible-state");
    assert.equal(e.val.found, found);
    assert.equal(e.val.expected, 2);
    if (reason) assert.equal(e.val.reason, reason);
    else assert.match(e.val.reason, /^not a JavaScript SDK snapshot: /);
  }
  assert.deepEqual(p.snapshot(), before, "a refused snapshot leaves the state alone");
});

test("log goes to host-log", () => {
  log("WARN", "hello");
  assert.deepEqual(logged.at(-1), ["warn", "hello"]);
  assert.throws(() => log("loud", "x"), TypeError);
});

test("encodeState is the documented format", () => {
  assert.equal(dec.decode(encodeState(1, null)), '{"state":null,"version":1}');
});

// ------------------------------------------------------------- redactor --
// The cases of plugins/redactor/src/lib.rs's unit tests.

function redactor(config = "") {
  const r = new Redactor();
  r.configure(config);
  return r;
}
const all = (text) => redactor().redact(text) ?? text;
function check(cases) {
  for (const [input, expected] of cases) assert.equal(all(input), expected, `input ${JSON.stringify(input)}`);
}

test("redactor: e-mails", () => {
  check([
    ["mail bob@example.com now", "mail [email] now"], ["bob@example.com", "[email]"],
    ["<first.last+tag@mail.example.co.uk>", "<[email]>"], ["a_b%c-d@sub-domain.example.org", "[email]"],
    ["x@y.io, z@w.dev", "[email], [email]"], ["end of sentence: bob@example.com.", "end of sentence: [email]."],
    ["..bob@example.com", "..[email]"], ["https://user:secret@host.example.com/path", "https://user:[email]/path"],
    ["UPPER@EXAMPLE.COM", "[email]"], ["bob@example.com.123", "[email].123"], ["x@y@example.com", "x@[email]"],
    ["répondre à bob@example.com", "répondre à [email]"], ["bob@example.com\u00e9", "[email]\u00e9"],
  ]);
  const noIp = redactor("email,bearer");
  for (const text of ["a@b", "user@localhost", "@example.com", "bob@", "bob@.com", "bob@example.", "bob@example.c",
    "bob@example.c0m", "bob@1.2.3.4", "@@", "a@@b.com", "...@example.com", "ssh git@github:repo", "price 5@3.50"]) {
    assert.equal(noIp.redact(text), null, text);
  }
  assert.equal(all("bob@1.2.3.4"), "bob@[ipv4]");
});

test("redactor: IPv4", () => {
  check([
    ["1.2.3.4", "[ipv4]"], ["from 10.0.0.1 to 192.168.255.255", "from [ipv4] to [ipv4]"],
    ["0.0.0.0 255.255.255.255", "[ipv4] [ipv4]"], ["addr=10.0.0.1:8080", "addr=[ipv4]:8080"],
    ["connected from 10.0.0.1.", "connected from [ipv4]."], ["(127.0.0.1)", "([ipv4])"], ["[1.2.3.4]", "[[ipv4]]"],
    ["x-forwarded-for: 1.1.1.1, 8.8.8.8", "x-forwarded-for: [ipv4], [ipv4]"], ["010.001.000.001", "[ipv4]"],
    ["-1.2.3.4", "-[ipv4]"], ["1.2.3.4..", "[ipv4].."], ["1.2.3.4 999.1.1.1 5.6.7.8", "[ipv4] 999.1.1.1 [ipv4]"],
  ]);
  for (const text of ["999.1.1.1", "1.2.3.256", "1.2.3.4.5", "0.1.2.3.4", "v1.2.3", "v1.2.3.4", "1.2.3", "1.2.3.",
    "1.2..3.4", "1234.1.1.1", "1.1.1.1234", "11.2.3.4a", "a1.2.3.4", "_1.2.3.4", "1.2.3.4_", ".1.2.3.4",
    "1.2.3.4.com", "2024.01.02", "1.2.3.4e5", "12345"]) {
    assert.equal(all(text), text, text);
  }
});

test("redactor: bearer tokens", () => {
  check([
    ["Authorization: Bearer abc.def-ghi_jkl~mno+pq/rs==", "Authorization: Bearer [token]"],
    ["authorization: bearer eyJhbGciOi.eyJzdWIi.SflKx", "authorization: bearer [token]"],
    ["BEARER x", "BEARER [token]"], ["Bearer\tabc", "Bearer\t[token]"], ["Bearer   abc rest", "Bearer   [token] rest"],
    ['"Bearer abc"', '"Bearer [token]"'], ["Bearer abc, Bearer def", "Bearer [token], Bearer [token]"],
    ["(Bearer abc)", "(Bearer [token])"], ["Bearer 1.2.3.4", "Bearer [token]"], ["Bearer bob@example.com", "Bearer [email]"],
  ]);
  for (const text of ["Bearer", "Bearer ", "Bearer: abc", "Bearerabc", "xBearer abc", "_bearer abc", "bearer\nabc",
    "Bearer [token]", "Bear abc", "Basic dXNlcjpwYXNz"]) {
    assert.equal(all(text), text, text);
  }
});

test("redactor: JSON escapes are word boundaries and are never cut", () => {
  check([
    ['{"m":"line\\nBearer abc"}', '{"m":"line\\nBearer [token]"}'],
    ['{"m":"from\\t10.0.0.1"}', '{"m":"from\\t[ipv4]"}'],
    ['{"m":"to\\nbob@example.com"}', '{"m":"to\\n[email]"}'],
    ['{"m":"to\\u00e9bob@example.com"}', '{"m":"to\\u00e9[email]"}'],
    ['{"m":"\\u00201.2.3.4"}', '{"m":"\\u0020[ipv4]"}'],
    ['{"a":"Bearer ab\\/cd=="}', '{"a":"Bearer [token]"}'],
    ['{"m":"\\\\n1.2.3.4 \\\\nbob@example.com"}', '{"m":"\\\\n1.2.3.4 \\\\[email]"}'],
    ['{"msg":"user bob@example.com\\nfrom 10.1.2.3\\tauth Bearer x.y\\/z","ip":"8.8.8.8"}',
      '{"msg":"user [email]\\nfrom [ipv4]\\tauth Bearer [token]","ip":"[ipv4]"}'],
  ]);
});

test("redactor: maskers can be chosen; bad configurations are refused", () => {
  const text = "bob@example.com 1.2.3.4 Bearer abc";
  const w = (c) => redactor(c).redact(text) ?? text;
  assert.equal(w(""), "[email] [ipv4] Bearer [token]");
  assert.equal(w("email"), "[email] 1.2.3.4 Bearer abc");
  assert.equal(w("ipv4"), "bob@example.com [ipv4] Bearer abc");
  assert.equal(w("bearer"), "bob@example.com 1.2.3.4 Bearer [token]");
  assert.equal(w(" bearer , email "), "[email] 1.2.3.4 Bearer [token]");
  assert.equal(w("email,ipv4,bearer,email"), "[email] [ipv4] Bearer [token]");
  assert.equal(redactor("ipv4").redact("Bearer 1.2.3.4"), "Bearer [ipv4]");
  assert.equal(configError(() => redactor("email,")), 'the redactor configuration "email," has an empty entry in its comma list');
  assert.equal(configError(() => redactor("EMAIL")), 'the redactor knows the maskers `email`, `ipv4` and `bearer`, not "EMAIL"');
  for (const bad of ["phone", ",email", "email,,ipv4", "email ipv4"]) configError(() => redactor(bad));
  assert.equal(redactor().redact("nothing to see, v1.2.3"), null);
  assert.equal(redactor().redact(""), null);
});

test("redactor: one output per record, key and headers kept, invalid UTF-8 rejected", () => {
  const p = redactorExport;
  p.configure("");
  const input = [
    { value: "login bob@example.com from 10.0.0.1", key: "k0", headers: [["trace", "1"]] },
    { value: "nothing here" },
    { value: new Uint8Array([0xff, 0xfe, 0x61]), key: "" },
    { value: "", key: new Uint8Array([0xff]) },
  ];
  const out = p.processBatch(batch(input));
  assert.deepEqual(out.rejections, [{ inputIndex: 2, reason: "the value is not valid UTF-8 text" }]);
  assert.deepEqual(out.outputs.map((o) => [o.inputIndex, dec.decode(o.value), o.key && [...o.key], o.topic]),
    [[0, "login [email] from [ipv4]", [...enc.encode("k0")], undefined], [1, "nothing here", undefined, undefined],
      [3, "", [0xff], undefined]]);
  assert.deepEqual(out.outputs[0].headers.map((h) => [h.key, dec.decode(h.value)]), [["trace", "1"]]);
  assert.equal(dec.decode(p.snapshot()), '{"state":null,"version":1}');
});

test("a leading byte-order mark is part of the value (TextDecoder would strip it)", () => {
  const p = exportProcessor(Redactor);
  p.configure("");
  const out = p.processBatch(batch([{ value: "\ufeffBearer x", headers: [["\ufeffh", "v"]] }]));
  assert.deepEqual([...out.outputs[0].value.subarray(0, 3)], [0xef, 0xbb, 0xbf]);
  assert.equal(out.outputs[0].headers[0].key, "\ufeffh");
});
