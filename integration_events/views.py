"""The monitoring endpoints: Prometheus metrics and the health check (include
``integration_events.urls`` in your URLconf; docs/observability.md).

- ``metrics``: Prometheus text format. Allowed with ``Authorization: Bearer <METRICS_TOKEN>``
  (the setting) or a logged-in staff user's session; anyone else gets 401 (no credentials) or
  403 (wrong ones).
- ``health``: JSON for load balancers and HTTP probes, 200 when healthy and 503 otherwise.
  It is public like any health endpoint and says no more than the command does; thresholds
  come from the query string (``?max_lag=300&max_dead_letters=100``).
"""

from __future__ import annotations

import hmac
import math

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .conf import get_settings
from .health import DEFAULT_MAX_DEAD_LETTERS, DEFAULT_MAX_LAG, check


def _bearer(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def metrics_allowed(request: HttpRequest) -> bool | None:
    """True: allowed; False: credentials given but wrong; None: no credentials at all."""
    token = get_settings().METRICS_TOKEN
    given = _bearer(request)
    if given is not None:
        return token is not None and hmac.compare_digest(given.encode(), token.encode())
    user = getattr(request, "user", None)
    if user is not None and user.is_active and user.is_staff:
        return True
    return False if user is not None and user.is_authenticated else None


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition of every database the engine serves (cached a few seconds)."""
    allowed = metrics_allowed(request)
    if allowed is None:
        response = HttpResponse("credentials required\n", status=401,
                                content_type="text/plain; charset=utf-8")
        response["WWW-Authenticate"] = 'Bearer realm="integration_events"'
        return response
    if not allowed:
        return HttpResponse("forbidden\n", status=403, content_type="text/plain; charset=utf-8")
    from .prometheus import CONTENT_TYPE_LATEST, exposition

    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)


def _threshold(request: HttpRequest, name: str, default: float) -> float:
    raw = request.GET.get(name)
    if raw is None:
        return default
    value = float(raw)  # ValueError: answered with 400 below
    if not math.isfinite(value) or value < 0:
        raise ValueError(name)
    return value


@never_cache
@require_GET
def health_view(request: HttpRequest) -> JsonResponse:
    """The health check as JSON: 200 if healthy, 503 with the reason if not."""
    try:
        max_lag = _threshold(request, "max_lag", DEFAULT_MAX_LAG)
        max_dead = int(_threshold(request, "max_dead_letters", DEFAULT_MAX_DEAD_LETTERS))
    except ValueError:
        return JsonResponse({"ok": False, "reason": "max_lag and max_dead_letters must be "
                             "non-negative numbers"}, status=400)
    health = check(max_lag=max_lag, max_dead_letters=max_dead)
    return JsonResponse(health.as_dict(), status=200 if health.ok else 503)
