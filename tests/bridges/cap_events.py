"""Test event classes shaped like the C# types of the CAP fixtures (snake_case here,
PascalCase on the wire). Defined on demand and forgotten after, so that the registry of
the other tests does not see them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from integration_events.events import IntegrationEvent, forget_event_class

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())  # type: ignore[no-any-return]


def define() -> dict[str, type[IntegrationEvent]]:
    class Person(IntegrationEvent, topic="sample.rabbitmq.mysql"):
        id: int
        name: str

    class User(IntegrationEvent, topic="authentication.users.update"):
        email: str
        name: str

    class Customer(BaseModel):
        display_name: str
        address_line2: str | None

    class OrderLine(BaseModel):
        sku: str
        quantity: int
        unit_price: Decimal

    class OrderPlaced(IntegrationEvent, topic="sales.order-placed"):
        order_id: UUID
        customer: Customer
        lines: list[OrderLine]
        placed_at: datetime

    return {cls.topic: cls for cls in (Person, User, OrderPlaced)}


def defined() -> Iterator[dict[str, type[IntegrationEvent]]]:
    classes = define()
    yield classes
    for cls in classes.values():
        forget_event_class(cls)


def validate(event_class: type[IntegrationEvent], content: str) -> IntegrationEvent:
    """As an event is read from stored content; decimals keep every digit (pydantic's own
    JSON parser reads a JSON number as a double)."""
    return event_class.model_validate(json.loads(content, parse_float=Decimal))
