"""integration_events.bridges.topics: CAP's wildcards as RabbitMQ topic bindings match."""

from __future__ import annotations

import pytest

from integration_events.bridges.topics import matches, overlap_example, overlaps, pattern_error


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("equipment.*", "equipment.equipment-created", True),
        ("equipment.*", "equipment", False),
        ("equipment.*", "equipment.a.b", False),
        ("*.created", "user.created", True),
        ("billing.#", "billing", True),  # zero words
        ("billing.#", "billing.invoice.paid", True),
        ("#.Pound", "Pound", True),  # RabbitMQ; CAP's own selector needs a word here
        ("#", "anything.at.all", True),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b.c", False),
        ("a.*.#", "a", False),
        ("Equipment.*", "equipment.x", False),  # case-sensitive, as the broker is
        ("a.b", "a.b", True),
    ],
)
def test_matches_like_a_topic_exchange(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("equipment.*", "#.created", True),
        ("equipment.*", "billing.#", False),
        ("a.*", "a.*.b", False),
        ("a.#", "*.b.c", True),
        ("#", "x.y", True),
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
    ],
)
def test_overlap_examples_are_matched_by_both(a: str, b: str, overlap: bool) -> None:
    example = overlap_example(a, b)
    assert (example is not None) is overlap
    if example is not None:
        assert example and matches(a, example) and matches(b, example)


def test_overlaps_lists_each_pair_with_an_example() -> None:
    found = overlaps(["equipment.*", "files.#"], ["#.created", "billing.#"])
    assert [(o.send, o.receive) for o in found] == [("equipment.*", "#.created"),
                                                    ("files.#", "#.created")]
    assert all(matches(o.send, o.example) and matches(o.receive, o.example) for o in found)


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [("", "empty"), ("a..b", "empty word"), ("a.b*", "whole word"), ("#x", "whole word"),
     ("a" * 256, "255 bytes"), (5, "must be a string")],
)
def test_pattern_errors(pattern: object, problem: str) -> None:
    error = pattern_error(pattern)
    assert error is not None and problem in error


def test_valid_patterns_have_no_error() -> None:
    assert pattern_error("a.*.#") is None
    assert pattern_error("equipment.equipment-created") is None
