"""A racing publisher for tests/test_ordering_cluster.py, run as its own process:

    python -m tests.ordering_publisher NAME COUNT START KEY [KEY ...]

From the Unix time START on (so that both publishers start together), publishes COUNT
Stepped events, each in its own transaction, on keys picked at random; in the same
transaction, right after publish(), it records how many messages of the key it can see
(tests.eventapp.models.Published), then holds the transaction open a moment so that the
other publisher has to wait for the key, and pauses a moment between transactions.
"""

from __future__ import annotations

import os
import random
import sys
import time


def main(name: str, count: int, start: float, keys: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.db import transaction

    from integration_events import publish
    from integration_events.models import PublishedMessage
    from tests.eventapp.events import Stepped
    from tests.eventapp.models import Published

    rng = random.Random(name)
    time.sleep(max(0.0, start - time.time()))
    for n in range(count):
        key = rng.choice(keys)
        with transaction.atomic():
            message = publish(Stepped(key=key, step=n, publisher=name))
            visible = PublishedMessage.objects.filter(ordering_key=key).count()
            Published.objects.create(message_id=message.pk, key=key, publisher=name,
                                     visible=visible)
            time.sleep(rng.uniform(0, 0.004))
        # Between transactions too: SQLite's one writer lock would otherwise go back to the
        # process that just released it, and the two would hardly interleave.
        time.sleep(rng.uniform(0, 0.01))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:])
