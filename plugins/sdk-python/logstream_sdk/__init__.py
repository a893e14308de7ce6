"""LogStream Python SDK: a thin, idiomatic layer over the bindings that
componentize-py generates from the `log-processor` WIT world.

A processor is a class::

    class MyProcessor(logstream_sdk.Processor):
        NAME = "my-processor"        # used in configuration errors
        STATE_VERSION = 1            # version of the snapshot format

        def configure(self, config: str) -> None:   # raise ConfigError
            ...

        def initial_state(self):                    # any JSON value
            return {"records": 0}

        def process(self, record: Record, emit: Emit) -> None:
            # read/modify self.state, call emit(Output(...)), or raise Reject
            ...

    Processor = logstream_sdk.export(MyProcessor)   # in the module `app`

The SDK owns the state: `self.state` is what `initial_state()` returns, and
the SDK snapshots it as JSON (with the state version) and restores it. Keep
every bit of state that affects future outputs in `self.state`, and only JSON
values in it (dicts with string keys, lists, str, int, float, bool, None).

A record is processed atomically: if `process` raises `Reject` (the record
goes to the dead-letter topic) or any other exception, its outputs are
dropped. NOTE: changes `process` made to `self.state` before raising are NOT
rolled back (the Rust SDK does the same): validate first, then mutate.
"""

import json

from wit_world import exports
from wit_world.imports import types, host_log
from componentize_py_types import Err

from .json_value import loads, object_fields, JSONError, SKIPPED

__all__ = [
    "Processor", "Record", "Output", "Header", "Reject", "ConfigError",
    "Settings", "export", "log", "loads", "object_fields", "JSONError", "SKIPPED",
]


class Reject(Exception):
    """Raise from `process` to refuse the record (dead-letter topic)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ConfigError(Exception):
    """Raise from `configure` when the configuration is not acceptable."""


class Header:
    __slots__ = ("key", "value")

    def __init__(self, key: str, value: bytes):
        self.key = key
        self.value = value

    def __repr__(self):
        return f"Header({self.key!r}, {self.value!r})"


class Record:
    """One input record. `value` and `key` are bytes (key may be None)."""

    __slots__ = ("partition", "offset", "timestamp_ms", "key", "value", "headers")

    def __init__(self, partition, offset, timestamp_ms, key, value, headers):
        self.partition = partition
        self.offset = offset
        self.timestamp_ms = timestamp_ms
        self.key = key
        self.value = value
        self.headers = headers

    def header(self, key: str):
        """The value of the last header named `key`, or None."""
        found = None
        for h in self.headers:
            if h.key == key:
                found = h.value
        return found


class Output:
    """One record to produce. `topic=None` is the processor's output topic."""

    __slots__ = ("value", "key", "topic", "headers")

    def __init__(self, value, key=None, topic=None, headers=()):
        self.value = _as_bytes(value)
        self.key = None if key is None else _as_bytes(key)
        self.topic = topic
        self.headers = list(headers)


def _as_bytes(v):
    if isinstance(v, str):
        return v.encode("utf-8")
    return bytes(v)


class Settings:
    """`key=value,key=value` configuration, with the Rust SDK's rules and
    messages (plugins/sdk/src/config.rs)."""

    def __init__(self, config: str, processor: str):
        self.processor = processor
        self.values = {}
        for pair in (p.strip() for p in config.split(",")):
            if not pair:
                continue
            if "=" not in pair:
                raise ConfigError(
                    f"{processor} expects settings as `key=value`, got {_rust_debug(pair)}")
            key, value = pair.split("=", 1)
            key = key.strip()
            if key in self.values:
                raise ConfigError(f"{processor} got the setting `{key}` twice")
            self.values[key] = value.strip()

    def take_int(self, key: str, default: int, minimum: int) -> int:
        text = self.values.pop(key, None)
        if text is None:
            return default
        # Rust's u64 parse: ASCII digits with an optional leading '+'.
        digits = text[1:] if text.startswith("+") else text
        if digits and digits.isascii() and digits.isdigit():
            n = int(digits)
            if minimum <= n < 2 ** 64:
                return n
        raise ConfigError(
            f"`{key}` must be a whole number of at least {minimum}, got {_rust_debug(text)}")

    def take_str(self, key: str):
        return self.values.pop(key, None)

    def finish(self) -> None:
        if self.values:
            key = min(self.values)  # Rust keeps them in a BTreeMap
            raise ConfigError(f"{self.processor} has no setting `{key}`")


def _rust_debug(text: str) -> str:
    # Close enough to Rust's `{:?}` for configuration messages.
    return json.dumps(text, ensure_ascii=False)


class Processor:
    """Base class of a processor; see the module documentation."""

    NAME = "processor"
    STATE_VERSION = 1

    def configure(self, config: str) -> None:
        if config.strip():
            raise ConfigError(f"{self.NAME} takes no configuration")

    def initial_state(self):
        return None

    def process(self, record: Record, emit) -> None:
        raise NotImplementedError

    def migrate(self, found_version: int, state):
        """Turn a snapshot's state of another version into this version's,
        or raise `ValueError` to refuse it. Default: refuse."""
        raise ValueError(
            f"state version {found_version} cannot be migrated to {self.STATE_VERSION}")


def log(level: str, message: str) -> None:
    """Log through the host: level is trace, debug, info, warn or error."""
    host_log.log(host_log.Level[level.upper()], message)


def encode_state(version: int, state) -> bytes:
    """The snapshot format: compact JSON with sorted keys (so equal states
    give byte-identical snapshots)."""
    return json.dumps({"state": state, "version": version}, ensure_ascii=False,
                      sort_keys=True, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


def export(cls):
    """The class componentize-py calls for the exported `processor`
    interface, driving an instance of `cls`. Bind it as `Processor` in the
    module `app`."""

    # componentize-py makes a new `Processor` object for every call into the
    # component, so the processor instance lives here, per component instance.
    slot = [None]

    class _Export(exports.Processor):

        def state_version(self) -> int:
            return cls.STATE_VERSION

        def configure(self, config: str) -> None:
            inner = cls()
            try:
                inner.configure(config)
                inner.state = inner.initial_state()
            except ConfigError as e:
                raise Err(types.ProcessorError_InvalidConfig(str(e)))
            except Exception as e:
                raise Err(types.ProcessorError_Failed(f"configure failed: {e!r}"))
            slot[0] = inner

        def process_batch(self, batch: types.RecordBatch) -> types.BatchResult:
            inner = self._configured()
            data = batch.data
            hspans = batch.headers
            outputs = []
            rejections = []
            pending = []
            emit = pending.append
            for index, r in enumerate(batch.records):
                v = r.value
                k = r.key
                headers = []
                for h in hspans[r.first_header:r.first_header + r.header_count]:
                    headers.append(Header(
                        data[h.key.offset:h.key.offset + h.key.len].decode("utf-8", "replace"),
                        data[h.value.offset:h.value.offset + h.value.len]))
                record = Record(
                    r.partition, r.offset, r.timestamp_ms,
                    None if k is None else data[k.offset:k.offset + k.len],
                    data[v.offset:v.offset + v.len],
                    headers)
                try:
                    inner.process(record, emit)
                except Reject as e:
                    pending.clear()
                    rejections.append(types.Rejection(index, e.reason))
                    continue
                except Exception as e:
                    raise Err(types.ProcessorError_Failed(
                        f"process failed on record {index}: {e!r}"))
                for o in pending:
                    outputs.append(types.OutputRecord(
                        index, o.topic, o.key, o.value,
                        [types.Header(h.key, _as_bytes(h.value)) for h in o.headers]))
                pending.clear()
            return types.BatchResult(outputs, rejections)

        def snapshot(self) -> bytes:
            inner = self._configured()
            try:
                return encode_state(cls.STATE_VERSION, inner.state)
            except Exception as e:
                raise Err(types.ProcessorError_Failed(f"the state is not JSON: {e!r}"))

        def restore(self, state: bytes) -> None:
            inner = self._configured()
            expected = cls.STATE_VERSION
            try:
                doc = json.loads(state.decode("utf-8"))
                version = doc["version"]
                value = doc["state"]
                if not isinstance(version, int) or isinstance(version, bool):
                    raise ValueError("`version` is not an integer")
            except Exception as e:
                found, reason = None, f"not a Python SDK snapshot: {e}"
                if state[:4] == b"LSS1" and len(state) >= 8:
                    # A Rust SDK snapshot: magic, then the state version (u32 LE).
                    found = int.from_bytes(state[4:8], "little")
                    reason = "a Rust SDK snapshot, which the Python SDK cannot read"
                raise Err(types.ProcessorError_IncompatibleState(types.IncompatibleState(
                    found, expected, reason)))
            if version != expected:
                try:
                    value = inner.migrate(version, value)
                except Exception as e:
                    raise Err(types.ProcessorError_IncompatibleState(types.IncompatibleState(
                        version if 0 <= version < 2 ** 32 else None, expected, str(e))))
            inner.state = value

        def _configured(self):
            if slot[0] is None:
                raise Err(types.ProcessorError_Failed("not configured"))
            return slot[0]

    _Export.__name__ = "Processor"
    _Export.__qualname__ = "Processor"
    return _Export
