from __future__ import annotations

import os
from typing import Any

from .models import FailedCallback


def record_failed(message: Any) -> None:
    """FAILED_THRESHOLD_CALLBACK for the reliability suite: one row per call."""
    FailedCallback.objects.create(
        model=type(message).__name__, key=str(message.pk), status=message.status,
        pid=os.getpid(),
    )
