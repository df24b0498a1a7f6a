"""The engine's side of the broker bridges.

``integration_events.bridges`` is the transport, independent of the engine (settings,
topic patterns, naming, the CAP wire codec, pika publisher and consumer). This package
puts it to work:

- sending (:mod:`.sending`): a subscriber group ``bridge:<name>`` per bridge, added through
  the group-resolution seam, whose batch handler publishes with confirms;
- receiving (:mod:`.receiving`): storing delivered messages in the outbox, once each, and
  bad wire input as failed messages;
- consuming (:mod:`.consuming`): the loop of ``manage.py integration_events_consume``.

Importing it does not import pika; sending and consuming do, when they first run.
"""

from __future__ import annotations

from .sending import BridgeResolver, group_name, resolver, sync_resolver

__all__ = ["BridgeResolver", "group_name", "resolver", "sync_resolver"]
