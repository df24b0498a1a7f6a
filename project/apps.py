from __future__ import annotations

from django.apps import AppConfig


class ProjectConfig(AppConfig):
    """The demo project as an app, so that its management commands (seed_demo, simulate)
    are found. It has no models."""

    name = "project"
    verbose_name = "Demo project"
