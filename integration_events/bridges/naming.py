"""JSON property names on the wire: "pascal", "camel" or "as-is", both ways.

CAP serialises with System.Text.Json's defaults: no naming policy, so a C# property
``UserId`` is ``"UserId"`` on the wire, and reading is case-sensitive. Our events have
snake_case fields. ``to_wire`` renames the keys of every object (nested objects and
objects in lists too; values never) from snake_case to the policy; ``from_wire`` renames
them back.

The rule is exact and reversible for canonical snake_case names (lower-case words of
letters and digits, each starting with a letter, joined by single underscores): every
capital on the wire starts a new word. A key that is not canonical snake_case going out,
or not of the policy's shape coming in, is left as it is. ``round_trips`` tells whether a
name survives the trip; ``address_line_2`` does not turn into ``AddressLine2`` (it stays
as is), and a .NET acronym such as ``UserID`` comes in as ``user_i_d``.

The JSON text is renamed in place: numbers, strings and layout are copied byte for byte,
so a decimal such as ``123456789012345678901234.5678`` keeps every digit.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from functools import lru_cache
from typing import Any


class Naming(StrEnum):
    """How JSON property names look on the wire."""

    PASCAL = "pascal"
    """``user_id`` <-> ``UserId`` (what CAP's System.Text.Json defaults produce and expect)."""
    CAMEL = "camel"
    """``user_id`` <-> ``userId`` (JsonSerializerDefaults.Web, JsonNamingPolicy.CamelCase)."""
    AS_IS = "as-is"
    """Names travel unchanged."""


_SNAKE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z][a-z0-9]*)*")
_PASCAL = re.compile(r"(?:[A-Z][a-z0-9]*)+")
_CAMEL = re.compile(r"[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)*")
_WORD_START = re.compile(r"(?<!^)(?=[A-Z])")
# A JSON string, optionally followed by the colon that makes it an object key. Outside
# strings JSON text has no double quotes, so scanning from the left finds each string at
# its opening quote.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"(\s*:)?', re.DOTALL)


@lru_cache(maxsize=4096)
def wire_name(name: str, naming: Naming) -> str:
    """The wire form of one local (snake_case) property name."""
    if naming is Naming.AS_IS or not _SNAKE.fullmatch(name):
        return name
    first, *rest = name.split("_")
    head = first if naming is Naming.CAMEL else first.capitalize()
    return head + "".join(part.capitalize() for part in rest)


@lru_cache(maxsize=4096)
def local_name(name: str, naming: Naming) -> str:
    """The local (snake_case) form of one property name read from the wire."""
    if naming is Naming.AS_IS:
        return name
    shape = _CAMEL if naming is Naming.CAMEL else _PASCAL
    if not shape.fullmatch(name):
        return name
    return "_".join(word.lower() for word in _WORD_START.split(name))


def round_trips(name: str, naming: Naming) -> bool:
    """Whether ``name`` comes back unchanged from ``local_name(wire_name(name))``."""
    return local_name(wire_name(name, naming), naming) == name


def to_wire(value: Any, naming: Naming) -> Any:
    """``value`` (parsed JSON) with every object key in its wire form."""
    return _rename(value, naming, wire_name)


def from_wire(value: Any, naming: Naming) -> Any:
    """``value`` (parsed JSON from the wire) with every object key in its local form."""
    return _rename(value, naming, local_name)


def _rename(value: Any, naming: Naming, rename: Any) -> Any:
    if naming is Naming.AS_IS:
        return value
    if isinstance(value, dict):
        return {rename(k, naming): _rename(v, naming, rename) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename(v, naming, rename) for v in value]
    return value


def to_wire_json(text: str, naming: Naming) -> str:
    """JSON text with every object key renamed to its wire form (the text must be valid
    JSON; everything but the keys is copied unchanged)."""
    return _rename_text(text, naming, wire_name)


def from_wire_json(text: str, naming: Naming) -> str:
    """JSON text from the wire with every object key renamed to its local form."""
    return _rename_text(text, naming, local_name)


def _rename_text(text: str, naming: Naming, rename: Any) -> str:
    if naming is Naming.AS_IS:
        return text

    def replace(match: re.Match[str]) -> str:
        if match.group(1) is None:  # a string value: untouched
            return match.group(0)
        token = match.group(0)[: -len(match.group(1))]
        # Most keys have no escapes: their text is the key itself (no JSON parse needed).
        plain = "\\" not in token
        key = token[1:-1] if plain else json.loads(token)
        new = rename(key, naming)
        if new == key:
            return match.group(0)
        # A renamed key is made of letters, digits and "_" only: quoting it is enough.
        return (f'"{new}"' if plain else json.dumps(new, ensure_ascii=False)) + match.group(1)

    return _STRING.sub(replace, text)
