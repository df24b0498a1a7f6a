from django.apps import AppConfig


class ReliabilityProbeConfig(AppConfig):
    name = "tests.reliability.probe"
    label = "reliability_probe"
    default_auto_field = "django.db.models.BigAutoField"
