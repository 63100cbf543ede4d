"""`json.dumps(data, ensure_ascii=False, indent=2)`, byte for byte, at C speed for the big flat parts.

An indent makes the json module fall back to its pure-Python encoder (about 1 s for a 150k-token
tokenizer.json). Here containers are walked in Python but their scalar members are encoded in bulk by the C
string encoder through `map`, so a vocabulary (str -> int) or a merges list (pairs of strings) costs a few C
calls per item. Anything else goes through the json module itself, so the output is the json module's.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring  # the C encoder when available

INDENT = "  "
_SCALARS = (str, int, float, bool, type(None))


def dumps_indented(data: object) -> str:
    return _encode(data, 0)


def _scalar(value: object) -> str:
    if type(value) is str:
        return encode_basestring(value)
    if type(value) is int:
        return int.__repr__(value)
    return json.dumps(value)  # floats (NaN, Infinity), bools, None, int subclasses: as the json module writes them


def _key(key: object) -> str:
    """Keys as json writes them (its _iterencode_dict): str, then float, True, False, None, int, in that order."""
    if isinstance(key, str):
        return encode_basestring(key)
    if isinstance(key, float) or key is True or key is False or key is None:
        return encode_basestring(json.dumps(key))
    if isinstance(key, int):
        return encode_basestring(int.__repr__(key))
    raise TypeError(f"keys must be str, int, float, bool or None, not {key.__class__.__name__}")


def _encode(value: object, level: int) -> str:
    if isinstance(value, dict):
        if not value:
            return "{}"
        inner = "\n" + INDENT * (level + 1)
        values = value.values()
        if all(type(v) in _SCALARS for v in values):
            encoded = map(_scalar, values)
        else:
            encoded = (_encode(v, level + 1) for v in values)
        body = ("," + inner).join(map("{}: {}".format, map(_key, value), encoded))
        return "{" + inner + body + "\n" + INDENT * level + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        inner = "\n" + INDENT * (level + 1)
        if all(type(v) in _SCALARS for v in value):
            encoded = map(_scalar, value)
        elif all(type(v) is list and v and all(type(s) is str for s in v) for v in value):
            encoded = (_strings(v, level + 1) for v in value)  # merges: pairs of strings
        else:
            encoded = (_encode(v, level + 1) for v in value)
        return "[" + inner + ("," + inner).join(encoded) + "\n" + INDENT * level + "]"
    if isinstance(value, _SCALARS):
        return _scalar(value)
    return json.dumps(value)  # anything else: the json module's answer (its TypeError for unknown types)


def _strings(items: list[str], level: int) -> str:
    inner = "\n" + INDENT * (level + 1)
    return "[" + inner + ("," + inner).join(map(encode_basestring, items)) + "\n" + INDENT * level + "]"
