from __future__ import annotations

from django.apps import AppConfig


class IntegrationEventsConfig(AppConfig):
    name = "integration_events"
    verbose_name = "Integration events"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from . import checks, domain_checks  # noqa: F401  (register the system checks)
        from .bridging import sync_resolver
        from .logs import install_enqueue_filter
        from .registry import autodiscover
        from .tasks import connect_cluster_signals, install_schedule

        autodiscover()
        sync_resolver()  # the groups bridge:<name>, when BRIDGES names a bridge
        install_enqueue_filter()
        connect_cluster_signals()
        post_migrate.connect(install_schedule, sender=self)
