"""The message models' own loading (loading.LoadedWhole.from_db): rows built without
Model.__init__ must be the same objects Django's own way builds."""

from __future__ import annotations

import pytest
from django.db import models
from django.db.models.signals import post_init

from integration_events import loading, publish_many
from integration_events.loading import LoadedWhole
from integration_events.models import PublishedMessage, ReceivedMessage
from integration_events.worker import Worker
from tests.eventapp.events import ProbeHappened

pytestmark = pytest.mark.django_db


def loaded(queryset: models.QuerySet) -> list[tuple[dict, bool, str | None]]:
    """Each instance's attributes (its related cache too) and state, comparable."""
    out = []
    for obj in queryset:
        values = {k: v for k, v in obj.__dict__.items() if k != "_state"}
        cached = obj._state.fields_cache.get("message")
        if cached is not None:
            values["message"] = {k: v for k, v in cached.__dict__.items() if k != "_state"}
        out.append((values, obj._state.adding, obj._state.db))
    return out


def django_way(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LoadedWhole, "from_db", classmethod(models.Model.from_db.__func__))


def test_rows_load_as_djangos_own_way_loads_them(monkeypatch) -> None:
    publish_many([ProbeHappened(n=n) for n in range(3)], headers={"tenant": "t1"})
    Worker(keep_leases=False).dispatch_batch()
    queries = [lambda: ReceivedMessage.objects.select_related("message").order_by("pk"),
               lambda: PublishedMessage.objects.order_by("pk")]
    inits: list[object] = []
    init = models.Model.__init__

    def counted(self, *args, **kwargs) -> None:
        inits.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(models.Model, "__init__", counted)
    ours = [loaded(q()) for q in queries]
    assert inits == []  # built without __init__
    django_way(monkeypatch)
    theirs = [loaded(q()) for q in queries]
    assert len(inits) == 6 + 6 + 3  # inbox rows, their messages, the messages
    assert ours == theirs
    assert len(ours[0]) == 6 and ours[0][0][1:] == (False, "default")
    assert ours[0][0][0]["message"]["headers"]["tenant"] == "t1"


def test_deferred_fields_and_init_receivers_take_djangos_way() -> None:
    publish_many([ProbeHappened(n=1)])
    row = PublishedMessage.objects.only("pk", "topic").get()
    assert row.get_deferred_fields() >= {"content", "headers"}
    assert '"n":1' in row.content.replace(" ", "")  # loaded when asked for
    seen: list[object] = []

    def receiver(sender, instance, **kwargs) -> None:
        seen.append(instance)

    post_init.connect(receiver, sender=PublishedMessage)
    try:
        again = PublishedMessage.objects.get()
    finally:
        post_init.disconnect(receiver, sender=PublishedMessage)
    assert seen == [again]


def test_a_model_with_an_init_of_its_own_runs_it(monkeypatch) -> None:
    publish_many([ProbeHappened(n=1)])
    monkeypatch.setattr(loading, "_ATTNAMES", {})
    built: list[object] = []

    def own_init(self, *args, **kwargs) -> None:
        built.append(self)
        models.Model.__init__(self, *args, **kwargs)

    monkeypatch.setattr(PublishedMessage, "__init__", own_init)
    row = PublishedMessage.objects.get()
    assert built == [row] and row.topic


def test_a_model_with_a_setattr_of_its_own_is_loaded_through_it(monkeypatch) -> None:
    publish_many([ProbeHappened(n=1)])
    monkeypatch.setattr(loading, "_ATTNAMES", {})
    names: list[str] = []

    def own_setattr(self, name, value) -> None:
        names.append(name)
        models.Model.__setattr__(self, name, value)

    monkeypatch.setattr(PublishedMessage, "__setattr__", own_setattr)
    row = PublishedMessage.objects.get()
    assert "topic" in names and row.topic
