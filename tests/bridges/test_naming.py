"""integration_events.bridges.naming: property names on the wire, both ways, keys only."""

from __future__ import annotations

import json

import pytest

from integration_events.bridges.naming import (
    Naming,
    from_wire,
    from_wire_json,
    local_name,
    round_trips,
    to_wire,
    to_wire_json,
    wire_name,
)

LOCAL = {
    "order_id": "6c7d",
    "customer": {"display_name": "Ada", "address_line2": "Flat 3"},
    "lines": [{"unit_price": 12.5, "sku": "a_b_c"}, {"unit_price": 1, "sku": "user_id"}],
    "tags": ["user_id", "x_y"],
    "x_y": None,
}
PASCAL = {
    "OrderId": "6c7d",
    "Customer": {"DisplayName": "Ada", "AddressLine2": "Flat 3"},
    "Lines": [{"UnitPrice": 12.5, "Sku": "a_b_c"}, {"UnitPrice": 1, "Sku": "user_id"}],
    "Tags": ["user_id", "x_y"],
    "XY": None,
}


def test_pascal_renames_keys_of_nested_objects_and_lists_never_values() -> None:
    assert to_wire(LOCAL, Naming.PASCAL) == PASCAL
    assert from_wire(PASCAL, Naming.PASCAL) == LOCAL


def test_camel() -> None:
    wire = to_wire(LOCAL, Naming.CAMEL)
    assert list(wire) == ["orderId", "customer", "lines", "tags", "xY"]
    assert wire["customer"] == {"displayName": "Ada", "addressLine2": "Flat 3"}
    assert from_wire(wire, Naming.CAMEL) == LOCAL


def test_as_is_changes_nothing() -> None:
    assert to_wire(LOCAL, Naming.AS_IS) == LOCAL
    text = '{"a_b": 1}'
    assert to_wire_json(text, Naming.AS_IS) is text


@pytest.mark.parametrize("naming", [Naming.PASCAL, Naming.CAMEL])
@pytest.mark.parametrize(
    "name", ["id", "user_id", "a_b", "x2_y", "address_line2", "sha256_hash", "a_b_c_d"]
)
def test_canonical_snake_case_round_trips(name: str, naming: Naming) -> None:
    assert round_trips(name, naming)
    assert local_name(wire_name(name, naming), naming) == name


@pytest.mark.parametrize(
    ("name", "survives"),
    [("address_line_2", True), ("_private", True), ("a__b", True), ("URL", False),
     ("UserName", False)],
)
def test_names_that_are_not_canonical_snake_case_travel_as_they_are(
    name: str, survives: bool
) -> None:
    assert wire_name(name, Naming.PASCAL) == name
    # ...and come back unchanged unless they look PascalCase on the wire.
    assert round_trips(name, Naming.PASCAL) is survives


def test_dotnet_acronyms_come_in_one_letter_a_word() -> None:
    assert local_name("UserID", Naming.PASCAL) == "user_i_d"
    assert local_name("Id", Naming.PASCAL) == "id"


def test_json_text_keeps_numbers_strings_and_layout_byte_for_byte() -> None:
    text = ('{"unit_price": 123456789012345678901234.5678, "note": "a_b: \\"c_d\\": e",\n'
            ' "items": [{"qty_left": 1.10, "k": "\\u00e9"}], "x_y": 1e400}')
    wire = to_wire_json(text, Naming.PASCAL)
    assert wire == ('{"UnitPrice": 123456789012345678901234.5678, "Note": "a_b: \\"c_d\\": e",'
                    '\n "Items": [{"QtyLeft": 1.10, "K": "\\u00e9"}], "XY": 1e400}')
    assert from_wire_json(wire, Naming.PASCAL) == text


def test_json_text_with_escaped_keys() -> None:
    text = json.dumps({"caf\u00e9_au_lait": 1, 'quote"d_key': 2})
    # Neither key is canonical snake_case: both stay.
    assert json.loads(to_wire_json(text, Naming.PASCAL)) == json.loads(text)
