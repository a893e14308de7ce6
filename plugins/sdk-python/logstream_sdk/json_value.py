"""Strict JSON parsing for processors (RFC 8259, as serde_json reads it):
no NaN/Infinity, and deep nesting parsed without native recursion.

CPython's json decoder recurses in C once per nesting level; inside a
WebAssembly component that exhausts the wasm call stack (a trap, so the record
*fails* instead of being rejected) somewhere below 3,000 levels, while the
Rust SDK's serde_json skips deeply nested values it does not need. So values
with many brackets are walked by an iterative parser here instead: `loads`
refuses them beyond MAX_DEPTH, and `object_fields` (which builds nothing but
the top-level fields asked for) accepts any depth, as serde_json does.
"""

import json
import re

__all__ = ["loads", "object_fields", "JSONError", "SKIPPED", "MAX_DEPTH"]

# Values with more opening brackets than this are walked iteratively first.
DEEP = 200
# `loads` refuses values nested deeper than this (building them would trap:
# CPython frees nested containers recursively too).
MAX_DEPTH = 200


class _Skipped:
    def __repr__(self):
        return "SKIPPED"


SKIPPED = _Skipped()
"""What `object_fields` returns for a field whose value is an array or object."""


class JSONError(ValueError):
    pass


def _no_constants(name):
    raise JSONError(f"invalid JSON constant {name}")


_decoder = json.JSONDecoder(parse_constant=_no_constants)


def _text(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        try:
            return data.decode("utf-8"), data.count(b"[") + data.count(b"{")
        except UnicodeDecodeError as e:
            raise JSONError(f"invalid UTF-8: {e}") from None
    return data, data.count("[") + data.count("{")


def _c_decode(text):
    try:
        return _decoder.decode(text)
    except JSONError:
        raise
    except (ValueError, RecursionError) as e:
        raise JSONError(str(e)) from None


def loads(data):
    """Parse `data` (bytes or str) as one JSON value; raise `JSONError`
    (a ValueError) when it is not valid JSON, not valid UTF-8, or nested
    deeper than MAX_DEPTH."""
    text, opening = _text(data)
    if opening > DEEP:
        depth = _walk(text, None)
        if depth > MAX_DEPTH:
            raise JSONError(f"nested deeper than {MAX_DEPTH} levels")
    return _c_decode(text)


def object_fields(data, names):
    """Parse `data` as a JSON object and return `{name: value}` for its
    top-level fields named in `names` (the last occurrence of a repeated key
    wins; an array or object value is returned as SKIPPED). Nothing else is
    built, so any nesting depth is fine. Raise `JSONError` when `data` is not
    valid JSON or not an object."""
    names = frozenset(names)
    text, opening = _text(data)
    if opening > DEEP:
        found = {}
        _walk(text, names, found)
        return found
    value = _c_decode(text)
    if not isinstance(value, dict):
        raise JSONError(f"expected an object, found {type(value).__name__}")
    return {k: (SKIPPED if isinstance(v, (dict, list)) else v)
            for k, v in value.items() if k in names}


_TOKEN = re.compile(r"""[ \t\n\r]*(?:
    (?P<str>"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*")
  | (?P<num>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)
  | (?P<lit>true|false|null)
  | (?P<punct>[\[\]{}:,])
)""", re.VERBOSE)
_WS = " \t\n\r"
_LITERALS = {"true": True, "false": False, "null": None}


def _scalar(kind, tok):
    if kind == "str":
        return json.loads(tok)
    if kind == "num":
        return float(tok) if any(c in tok for c in ".eE") else int(tok)
    return _LITERALS[tok]


def _walk(text, names, found=None):
    """Validate `text` as one JSON value without building it, iteratively;
    return its maximum nesting depth. With `names`, the value must be an
    object and its top-level fields named in `names` go into `found`."""
    stack = []        # "[" or "{" per open container
    key = None        # the last key read in the top-level object
    depth = 0
    expect = "value"  # value | value_or_end | key | key_or_end | colon | comma_or_end | end
    pos = 0
    while True:
        m = _TOKEN.match(text, pos)
        if m is None:
            if expect == "end" and not text[pos:].strip(_WS):
                return depth
            raise JSONError(f"invalid JSON at character {pos}")
        pos = m.end()
        kind = m.lastgroup
        tok = m.group(kind)
        at = m.start(kind)
        if expect == "end":
            raise JSONError(f"trailing characters at character {at}")
        if expect in ("value", "value_or_end"):
            if kind == "punct":
                if tok == "]" and expect == "value_or_end":
                    stack.pop()
                    expect = "comma_or_end" if stack else "end"
                elif tok == "[" or tok == "{":
                    if names is not None:
                        if not stack and tok == "[":
                            raise JSONError("expected an object, found list")
                        if len(stack) == 1 and key in names:
                            found[key] = SKIPPED
                    stack.append(tok)
                    depth = max(depth, len(stack))
                    expect = "value_or_end" if tok == "[" else "key_or_end"
                else:
                    raise JSONError(f"expected a value at character {at}")
            else:
                if not stack:
                    if names is not None:
                        raise JSONError("expected an object, found a scalar")
                    _scalar(kind, tok)
                    expect = "end"
                    continue
                if kind == "str" or names is not None and len(stack) == 1 and key in names:
                    value = _scalar(kind, tok)   # validates escapes
                    if names is not None and len(stack) == 1 and key in names:
                        found[key] = value
                expect = "comma_or_end"
        elif expect in ("key", "key_or_end"):
            if kind == "str":
                k = json.loads(tok)
                if len(stack) == 1:
                    key = k
                expect = "colon"
            elif tok == "}" and expect == "key_or_end":
                stack.pop()
                expect = "comma_or_end" if stack else "end"
            else:
                raise JSONError(f"expected a key at character {at}")
        elif expect == "colon":
            if tok != ":":
                raise JSONError(f"expected ':' at character {at}")
            expect = "value"
        else:  # comma_or_end
            top = stack[-1]
            if tok == ",":
                expect = "value" if top == "[" else "key"
            elif tok == ("]" if top == "[" else "}"):
                stack.pop()
                expect = "comma_or_end" if stack else "end"
            else:
                raise JSONError(f"expected ',' or a closing bracket at character {at}")
