"""Topic patterns with CAP's wildcards, matched the way RabbitMQ's topic exchange does.

A topic is a routing key: words separated by dots. In a pattern ``*`` stands for exactly
one word and ``#`` for zero or more words; every other word matches itself
(case-sensitively). These are RabbitMQ's binding semantics, which decide what reaches a
queue. (CAP's own subscriber lookup inside a .NET service is close but not identical: its
``*`` is ``[0-9_a-zA-Z]+``, so it does not match a word with a hyphen, and its ``#`` needs
at least one word; see docs/bridges.md.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

STAR = "*"
HASH = "#"
# AMQP routing keys and binding keys are short strings: at most 255 bytes.
MAX_LENGTH = 255


def pattern_error(pattern: object) -> str | None:
    """Why ``pattern`` is not a valid topic pattern, or None if it is."""
    if not isinstance(pattern, str):
        return f"must be a string, got {type(pattern).__name__}"
    if not pattern:
        return "must not be empty"
    if len(pattern.encode()) > MAX_LENGTH:
        return f"is longer than {MAX_LENGTH} bytes (an AMQP binding key)"
    for word in pattern.split("."):
        if not word:
            return "has an empty word (two dots in a row, or a dot at either end)"
        if (STAR in word or HASH in word) and word not in (STAR, HASH):
            return (
                f"has the word {word!r}: a wildcard must be a whole word "
                "('*' one word, '#' any number of words)"
            )
    return None


@lru_cache(maxsize=1024)
def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split("."))


def matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` is routed by a binding with ``pattern`` (RabbitMQ semantics)."""
    return _match(_words(pattern), _words(topic))


@lru_cache(maxsize=4096)
def _match(pat: tuple[str, ...], words: tuple[str, ...]) -> bool:
    # Positions in the pattern reachable after consuming the words so far.
    states = _closure(pat, {0})
    for word in words:
        states = _closure(pat, _step(pat, states, word))
        if not states:
            return False
    return len(pat) in states


def _closure(pat: Sequence[str], states: Iterable[int]) -> set[int]:
    """``#`` may match zero words: from before a ``#`` one can also stand after it."""
    out = set(states)
    todo = list(out)
    while todo:
        i = todo.pop()
        if i < len(pat) and pat[i] == HASH and i + 1 not in out:
            out.add(i + 1)
            todo.append(i + 1)
    return out


def matches_any(patterns: Iterable[str], topic: str) -> bool:
    """Whether any of ``patterns`` matches ``topic``."""
    return any(matches(p, topic) for p in patterns)


def overlap_example(a: str, b: str) -> str | None:
    """A topic (at least one word) that both patterns match, or None if there is none.

    A breadth-first search over pairs of pattern positions; the words tried are the
    literal words of both patterns plus one word that is in neither, which stands for
    every other word.
    """
    pa, pb = _words(a), _words(b)
    literals = sorted({w for w in (*pa, *pb) if w not in (STAR, HASH)})
    other = "x"
    while other in literals:
        other += "x"
    alphabet = [*literals, other]
    start = (frozenset(_closure(pa, {0})), frozenset(_closure(pb, {0})))
    seen = {start}
    frontier: list[tuple[tuple[frozenset[int], frozenset[int]], tuple[str, ...]]] = [
        (start, ())
    ]
    while frontier:
        next_frontier = []
        for (sa, sb), path in frontier:
            for word in alphabet:
                na = _closure(pa, _step(pa, sa, word))
                nb = _closure(pb, _step(pb, sb, word))
                if not na or not nb:
                    continue
                words = (*path, word)
                if len(pa) in na and len(pb) in nb:
                    return ".".join(words)
                key = (frozenset(na), frozenset(nb))
                if key not in seen:
                    seen.add(key)
                    next_frontier.append((key, words))
        frontier = next_frontier
    return None


def _step(pat: Sequence[str], states: Iterable[int], word: str) -> set[int]:
    nxt: set[int] = set()
    for i in states:
        if i < len(pat):
            token = pat[i]
            if token == HASH:
                nxt.add(i)
            elif token in (STAR, word):
                nxt.add(i + 1)
    return nxt


@dataclass(frozen=True)
class Overlap:
    """A SEND pattern and a RECEIVE pattern that both match ``example``."""

    send: str
    receive: str
    example: str


def overlaps(send: Iterable[str], receive: Iterable[str]) -> list[Overlap]:
    """Every pair of a SEND and a RECEIVE pattern that match a common topic: on one bridge
    such a topic would be sent out and come straight back in."""
    found = []
    receive = list(receive)
    for s in send:
        for r in receive:
            example = overlap_example(s, r)
            if example is not None:
                found.append(Overlap(s, r, example))
    return found
