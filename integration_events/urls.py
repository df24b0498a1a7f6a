"""The monitoring endpoints, to include in a project's URLconf::

    path("integration-events/", include("integration_events.urls")),

gives ``integration-events/metrics`` (Prometheus) and ``integration-events/health`` (JSON).
"""

from __future__ import annotations

from django.urls import path

from .views import health_view, metrics_view

app_name = "integration_events"

urlpatterns = [
    path("metrics", metrics_view, name="metrics"),
    path("health", health_view, name="health"),
]
