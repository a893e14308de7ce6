"""`level-counter` in Python: the same behaviour and outputs as
plugins/level-counter (Rust); read its documentation there. Configuration
`every=N` (default 1000), `alerts=TOPIC`, `alert_level=LEVEL` (default
`error`). The snapshot format differs from the Rust one (the SDK's JSON).
"""

import json

import logstream_sdk
from logstream_sdk import Output, Reject, Settings, ConfigError

UNKNOWN = "unknown"
SUMMARY_KEY = b"summary"
FIELDS = ("service", "level", "severity", "lvl")


def _utf8(text: str) -> bool:
    # A lone surrogate escape ("\ud800") decodes in Python; serde_json refuses it.
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _lowercase(text: str) -> str:
    # Rust's `to_lowercase`, applied only when some character is upper case.
    lower = text.lower()
    if lower == text:
        return text
    # Changed by lower(): keep it only when a letter is upper case (not when
    # only title-case letters such as "ǅ" changed, which Rust leaves as is).
    return lower if any(c.isupper() for c in text) else text


class LevelCounter(logstream_sdk.Processor):
    NAME = "level-counter"
    STATE_VERSION = 1

    def configure(self, config: str) -> None:
        settings = Settings(config, self.NAME)
        self.every = settings.take_int("every", 1000, 1)
        self.alerts = settings.take_str("alerts")
        if self.alerts == "":
            raise ConfigError("`alerts` must name a topic")
        level = settings.take_str("alert_level")
        self.alert_level = "error" if level is None else level.lower()
        settings.finish()

    def initial_state(self):
        # counts: service -> level -> count; sorted when written out.
        return {"records": 0, "counts": {}}

    def process(self, record, emit) -> None:
        try:
            # Only the fields we need are built; the rest is validated (any
            # nesting depth, as serde_json in the Rust level-counter).
            fields = logstream_sdk.object_fields(record.value, FIELDS)
        except ValueError as e:
            raise Reject(f"the value is not a JSON object: {e}")
        # Rust reads all four fields as strings, whichever one counts.
        for name in FIELDS:
            value = fields.get(name)
            if isinstance(value, str) and not _utf8(value):
                raise Reject("the value is not a JSON object: lone surrogate in a string")
        service = fields.get("service")
        if not isinstance(service, str):
            service = UNKNOWN
        level = UNKNOWN
        for name in ("level", "severity", "lvl"):
            value = fields.get(name)
            if isinstance(value, str):
                level = _lowercase(value)
                break

        if self.alerts is not None and level == self.alert_level:
            emit(Output(record.value, key=service, topic=self.alerts))
        state = self.state
        levels = state["counts"].setdefault(service, {})
        levels[level] = levels.get(level, 0) + 1
        state["records"] += 1
        if state["records"] % self.every == 0:
            emit(Output(self.summary_json(), key=SUMMARY_KEY))

    def summary_json(self) -> bytes:
        state = self.state
        # Keys in byte order: code-point order of str is UTF-8 byte order.
        # serde_json escapes only '"', '\\' and control characters, as
        # json.dumps with ensure_ascii=False does.
        counts = json.dumps(state["counts"], ensure_ascii=False, sort_keys=True,
                            separators=(",", ":"))
        return f'{{"records":{state["records"]},"counts":{counts}}}'.encode("utf-8")


Processor = logstream_sdk.export(LevelCounter)
