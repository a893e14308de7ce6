"""Unit tests of logstream_sdk and the Python level-counter, run by the build
machine's CPython against bindings from `componentize-py bindings` (see
run.sh), without WebAssembly. The component-level checks are in
compare-level-counter.sh."""

import json
import random
import unittest

from componentize_py_types import Err
from wit_world.imports import types

import logstream_sdk
from logstream_sdk import json_value
import app as level_counter_app


def batch(values):
    data = bytearray()
    records = []
    for i, v in enumerate(values):
        v = v.encode() if isinstance(v, str) else v
        span = types.Span(len(data), len(v))
        data += v
        records.append(types.LogRecord(0, i, 0, None, span, 0, 0))
    return types.RecordBatch(bytes(data), records, [])


def configured(config=""):
    p = level_counter_app.Processor()
    p.configure(config)
    return p


class SettingsTest(unittest.TestCase):
    def test_like_the_rust_sdk(self):
        s = logstream_sdk.Settings(" a=1 , b = x ", "p")
        self.assertEqual(s.take_int("a", 5, 1), 1)
        self.assertEqual(s.take_int("missing", 5, 1), 5)
        self.assertEqual(s.take_str("b"), "x")
        s.finish()
        with self.assertRaisesRegex(logstream_sdk.ConfigError, "`key=value`"):
            logstream_sdk.Settings("a", "p")
        with self.assertRaisesRegex(logstream_sdk.ConfigError, "twice"):
            logstream_sdk.Settings("a=1,a=2", "p")
        s = logstream_sdk.Settings("a=0,d=1,c=1", "p")
        with self.assertRaisesRegex(logstream_sdk.ConfigError, "at least 1"):
            s.take_int("a", 5, 1)
        with self.assertRaises(logstream_sdk.ConfigError) as e:
            s.finish()
        self.assertEqual(str(e.exception), "p has no setting `c`")
        for bad in ["-3", "1.5", "x", "", " 1", "١"]:
            s = logstream_sdk.Settings("every=" + bad, "p")
            if bad.strip() == "1":
                continue
            with self.assertRaises(logstream_sdk.ConfigError):
                s.take_int("every", 1, 1)
        self.assertEqual(logstream_sdk.Settings("n=+7", "p").take_int("n", 1, 1), 7)


class ExportTest(unittest.TestCase):
    def test_invalid_config_is_invalid_config(self):
        for bad in ["every=0", "every=", "window=5", "every=5,x=1", "alerts="]:
            with self.assertRaises(Err) as e:
                level_counter_app.Processor().configure(bad)
            self.assertIsInstance(e.exception.value, types.ProcessorError_InvalidConfig)

    def test_reject_drops_the_records_outputs(self):
        class P(logstream_sdk.Processor):
            def process(self, record, emit):
                emit(logstream_sdk.Output(b"first"))
                if record.value == b"bad":
                    raise logstream_sdk.Reject("no")
                emit(logstream_sdk.Output("second", key="k", topic="t"))

        exp = logstream_sdk.export(P)()
        exp.configure("")
        out = exp.process_batch(batch(["ok", "bad", "ok"]))
        self.assertEqual([(o.input_index, o.value) for o in out.outputs],
                         [(0, b"first"), (0, b"second"), (2, b"first"), (2, b"second")])
        self.assertEqual(out.outputs[1].key, b"k")
        self.assertEqual(out.outputs[1].topic, "t")
        self.assertEqual([(r.input_index, r.reason) for r in out.rejections], [(1, "no")])

    def test_other_exceptions_fail_the_batch(self):
        class P(logstream_sdk.Processor):
            def process(self, record, emit):
                raise KeyError("boom")

        exp = logstream_sdk.export(P)()
        exp.configure("")
        with self.assertRaises(Err) as e:
            exp.process_batch(batch(["x"]))
        self.assertIsInstance(e.exception.value, types.ProcessorError_Failed)

    def test_snapshot_format_and_restore_into_a_fresh_instance(self):
        p = configured("every=2")
        p.process_batch(batch(['{"service":"b","level":"W"}', '{"service":"a"}']))
        snap = p.snapshot()
        self.assertEqual(json.loads(snap), {"version": 1, "state": {
            "records": 2, "counts": {"a": {"unknown": 1}, "b": {"w": 1}}}})
        # byte-identical for equal states reached in another order
        q = configured("every=2")
        q.process_batch(batch(['{"service":"a"}', '{"service":"b","level":"W"}']))
        self.assertEqual(q.snapshot(), snap)
        r = configured("every=2")   # the module's instance is replaced
        r.restore(snap)
        out = r.process_batch(batch(['{"service":"a"}', '{"service":"a"}']))
        self.assertEqual(out.outputs[0].input_index, 1)
        self.assertEqual(out.outputs[0].value,
                         b'{"records":4,"counts":{"a":{"unknown":3},"b":{"w":1}}}')

    def test_restore_refuses_garbage_other_versions_and_rust_snapshots(self):
        p = configured()
        for snap, found in [(b"junk", None), (b'{"version":2,"state":{}}', 2),
                            (b"LSS1\x01\x00\x00\x00\xab", 1), (b'{"version":true,"state":1}', None)]:
            with self.assertRaises(Err) as e:
                p.restore(snap)
            err = e.exception.value
            self.assertIsInstance(err, types.ProcessorError_IncompatibleState, snap)
            self.assertEqual(err.value.found, found, snap)
            self.assertEqual(err.value.expected, 1)

    def test_migrate(self):
        class P(logstream_sdk.Processor):
            STATE_VERSION = 2

            def initial_state(self):
                return {"n": 0}

            def migrate(self, found, state):
                if found != 1:
                    raise ValueError("unknown")
                return {"n": state}

        exp = logstream_sdk.export(P)()
        exp.configure("")
        exp.restore(b'{"state":5,"version":1}')
        self.assertEqual(json.loads(exp.snapshot()), {"state": {"n": 5}, "version": 2})


class JsonTest(unittest.TestCase):
    def test_the_iterative_walk_agrees_with_the_c_decoder(self):
        seeds = ['{}', '[]', '{"a" : [1, 2.5, -0, 1e400, true, null, "x\\u00e9\\n"], "b":{"c":{}}}',
                 '{"a":1,"a":2}', '', '[1,]', '{"a":1,}', '01', 'NaN', '"\x01"', '"\\ud800"',
                 '{"a":1} x', '{1:2}', '[[[]]]', '  [1]\n', '\u00a0[1]', '[-0.0]', '[+1]',
                 '{"service":"a","level":[1],"lvl":"x","service":"b"}']
        rng = random.Random(1)
        alphabet = list('[]{}:," 0123456789.eE-+truefalsn\\u')
        cases = list(seeds)
        for _ in range(5000):
            s = list(rng.choice(seeds))
            for _ in range(rng.randint(0, 3)):
                op = rng.random()
                if op < .4 and s:
                    del s[rng.randrange(len(s))]
                elif op < .8:
                    s.insert(rng.randint(0, len(s)), rng.choice(alphabet))
                elif s:
                    s[rng.randrange(len(s))] = rng.choice(alphabet)
            cases.append(''.join(s))
        names = {"service", "level", "lvl", "a", "c"}
        for c in cases:
            try:
                ref = json.loads(c, parse_constant=lambda n: 1 / 0)
                ok = True
            except Exception:
                ok = False
            try:
                json_value._walk(c, None)
                self.assertTrue(ok, c)
            except json_value.JSONError:
                self.assertFalse(ok, c)
            found = {}
            try:
                json_value._walk(c, names, found)
                self.assertTrue(ok and isinstance(ref, dict), c)
                self.assertEqual(found, json_value.object_fields(c, names), c)
            except json_value.JSONError:
                self.assertFalse(ok and isinstance(ref, dict), c)

    def test_deep_values(self):
        deep = '{"service":"s","x":' + "[" * 50000 + "]" * 50000 + "}"
        self.assertEqual(logstream_sdk.object_fields(deep.encode(), ["service", "x"]),
                         {"service": "s", "x": logstream_sdk.SKIPPED})
        with self.assertRaisesRegex(logstream_sdk.JSONError, "deeper"):
            logstream_sdk.loads(deep)
        self.assertEqual(logstream_sdk.loads("[" * 150 + "]" * 150), json.loads("[" * 150 + "]" * 150))
        with self.assertRaises(logstream_sdk.JSONError):
            logstream_sdk.loads(b"\xff{}")


if __name__ == "__main__":
    unittest.main()
