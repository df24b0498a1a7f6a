"""The demo project's URLs plus the monitoring endpoints and the triage page (tests of
integration_events.views and integration_events.triage_admin)."""

from django.contrib import admin
from django.urls import include, path

from integration_events.triage_admin import triage_urls
from project.urls import urlpatterns as project_urlpatterns

urlpatterns = [
    *project_urlpatterns,
    path("integration-events/", include("integration_events.urls")),
    path("ie-admin/", include(triage_urls(admin.site))),
]
