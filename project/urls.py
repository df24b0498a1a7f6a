from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # Prometheus metrics and the health probe (docs/observability.md).
    path("integration-events/", include("integration_events.urls")),
]
