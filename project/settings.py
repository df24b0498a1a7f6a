"""Settings of the demo project, also used by the test suite.

The database is chosen by environment variables so that the same settings serve the demo
(SQLite, no server) and the test matrix (SQLite, PostgreSQL, MariaDB):

    IE_DB=sqlite|postgres|mysql   (default sqlite)
    IE_DB_NAME                    database name (server backends; default "test")
    IE_DB_HOST / IE_DB_PORT / IE_DB_USER / IE_DB_PASSWORD
    IE_SQLITE_PATH                SQLite file (default var/db.sqlite3)
    IE_SQLITE_TEST_PATH           SQLite file the test runner creates (default
                                  var/test-db.sqlite3; a file, so that a qcluster
                                  subprocess can share it)
    IE_Q_BROKER=orm|redis         django-q2 broker (default orm)
    IE_Q_WORKERS                  django-q2 workers (default 1 on SQLite, 2 otherwise)
    IE_LOG_LEVEL                  level of the integration_events logger (default INFO)
    IE_LOG_FILE                   also log everything to this file (demo.sh: var/demo.log)
    IE_CONSOLE_LOG_LEVEL          the console's threshold (default: all; demo.sh: WARNING)
    IE_MAIL_DIR                   where the file e-mail backend writes (default var/mail)
    IE_SERVICE=accounts|inventory one of two services over RabbitMQ (see SERVICES below)
    IE_AMQP_URL / IE_AMQP_EXCHANGE their broker and exchange
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import django

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("IE_VAR_DIR", BASE_DIR / "var")).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """A per-checkout random key, kept in var/ (never committed)."""
    if os.environ.get("DJANGO_SECRET_KEY"):
        return os.environ["DJANGO_SECRET_KEY"]
    path = VAR_DIR / "secret_key"
    if not path.exists():
        import secrets

        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    "integration_events",
    "accounts",
    "equipment",
    "files",
    "project",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "project.wsgi.application"

DB_VENDOR = os.environ.get("IE_DB", "sqlite")
_server = {
    "HOST": os.environ.get("IE_DB_HOST", "127.0.0.1"),
    "NAME": os.environ.get("IE_DB_NAME", "test"),
    # Workers keep their connection: a new one per task costs more than the task.
    "CONN_MAX_AGE": None,
    "CONN_HEALTH_CHECKS": True,
}
DATABASES: dict[str, dict[str, Any]]
if DB_VENDOR == "postgres":
    DATABASES = {"default": {
        **_server,
        "ENGINE": "django.db.backends.postgresql",
        "PORT": os.environ.get("IE_DB_PORT", "5432"),
        "USER": os.environ.get("IE_DB_USER", "postgres"),
        "PASSWORD": os.environ.get("IE_DB_PASSWORD", ""),
    }}
elif DB_VENDOR == "mysql":
    DATABASES = {"default": {
        **_server,
        "ENGINE": "django.db.backends.mysql",
        "PORT": os.environ.get("IE_DB_PORT", "3306"),
        "USER": os.environ.get("IE_DB_USER", "root"),
        "PASSWORD": os.environ.get("IE_DB_PASSWORD", ""),
        # READ COMMITTED: claims must see rows other workers committed since the transaction
        # began (REPEATABLE READ, MariaDB's default, would hide them from a long transaction).
        "OPTIONS": {"isolation_level": "read committed", "charset": "utf8mb4"},
        "TEST": {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"},
    }}
elif DB_VENDOR == "sqlite":
    DATABASES = {"default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("IE_SQLITE_PATH", str(VAR_DIR / "db.sqlite3")),
        # Keep the connection (django-q2 closes "old" connections around every task).
        "CONN_MAX_AGE": None,
        "OPTIONS": {
            # One writer at a time: take the write lock at BEGIN instead of failing on upgrade,
            # wait up to 20 s for it, and let readers run beside the writer (WAL).
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        "TEST": {"NAME": os.environ.get(
            "IE_SQLITE_TEST_PATH", str(VAR_DIR / "test-db.sqlite3"))},
    }}
else:
    raise RuntimeError(f"IE_DB must be sqlite, postgres or mysql, not {DB_VENDOR!r}")

CACHES = {
    # File-based: shared by runserver and qcluster on one machine, so nudges are coalesced
    # across them. Use Redis (or the database cache) when they run on several machines.
    "default": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(VAR_DIR / "cache"),
    }
}

_workers = int(os.environ.get("IE_Q_WORKERS", "1" if DB_VENDOR == "sqlite" else "2"))
Q_CLUSTER: dict[str, Any] = {
    "name": "integration-events",
    "workers": _workers,
    # A task's work budget is a quarter of this (INTEGRATION_EVENTS TASK_TIME_BUDGET).
    "timeout": 120,
    "retry": 180,
    "max_attempts": 1,
    "ack_failures": True,
    "save_limit": 100,
    "poll": 0.1,
    "catch_up": False,
    "queue_limit": max(4, _workers * 2),
    "recycle": 1000,
    "label": "Django Q",
}
if os.environ.get("IE_Q_BROKER", "orm") == "redis":
    Q_CLUSTER["redis"] = {"host": os.environ.get("IE_REDIS_HOST", "127.0.0.1"), "port": 6379,
                          "db": int(os.environ.get("IE_REDIS_DB", "0"))}
else:
    Q_CLUSTER["orm"] = "default"

INTEGRATION_EVENTS: dict[str, Any] = {
    "MAX_ATTEMPTS": int(os.environ.get("IE_MAX_ATTEMPTS", "5")),
    "RETRY_BASE_DELAY": float(os.environ.get("IE_RETRY_BASE_DELAY", "2")),
    "LEASE_SECONDS": float(os.environ.get("IE_LEASE_SECONDS", "30")),
    # The demo's fault injection ([flaky] / [poison] data, see DEMO_FAULT_INJECTION below).
    "INSTRUMENTATION": ["project.faults.DemoFaults"],
}

# Two services over RabbitMQ (scripts/demo-two-services.sh, docs/bridges.md): IE_SERVICE
# picks the sample apps this service installs and what its bridge sends and receives.
# Unset, the demo is one service with all three apps and no bridge.
SERVICES = {  # name: (sample apps, SEND, RECEIVE)
    "accounts": (["accounts"], ["accounts.*"], ["equipment.*"]),
    "inventory": (["equipment", "files"], ["equipment.*"], ["accounts.*"]),
}
SERVICE = os.environ.get("IE_SERVICE", "")
if SERVICE:
    if SERVICE not in SERVICES:
        raise RuntimeError(f"IE_SERVICE must be one of {', '.join(SERVICES)}, not {SERVICE!r}")
    _apps, _send, _receive = SERVICES[SERVICE]
    INSTALLED_APPS = [app for app in INSTALLED_APPS
                      if app not in ("accounts", "equipment", "files") or app in _apps]
    INTEGRATION_EVENTS["BRIDGES"] = {"rabbit": {
        "TRANSPORT": "amqp",
        "URL": os.environ.get("IE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
        "EXCHANGE": os.environ.get("IE_AMQP_EXCHANGE", "cap.default.router"),
        "SEND": _send,
        "RECEIVE": _receive,
        # (IE_AMQP_QUEUE_PREFIX: queues of their own, e.g. for a test beside a running demo)
        "QUEUE": os.environ.get("IE_AMQP_QUEUE_PREFIX", "") + f"{SERVICE}.v1",
    }}

AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
MEDIA_ROOT = Path(os.environ.get("IE_MEDIA_ROOT", VAR_DIR / "media"))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DEFAULT_FROM_EMAIL = "equipment@example.com"
# The e-mails the sample handlers send go to files (one per connection) in var/mail/, not to
# the console, where a burst of them would scroll everything else away. (The test runner
# switches to the locmem backend itself.)
_EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_DIR = Path(os.environ.get("IE_MAIL_DIR", VAR_DIR / "mail"))
if django.VERSION >= (6, 1):
    MAILERS = {"default": {"BACKEND": _EMAIL_BACKEND, "OPTIONS": {"file_path": str(EMAIL_DIR)}}}
else:  # pragma: no cover - Django 5.2 / 6.0
    EMAIL_BACKEND = _EMAIL_BACKEND
    EMAIL_FILE_PATH = str(EMAIL_DIR)
# Who the equipment context notifies when equipment is created (equipment.subscribers).
EQUIPMENT_NOTIFICATION_RECIPIENTS = ["inventory@example.com"]
# Demo only: the sample contexts' handlers fail on data marked "[flaky]" (first attempt) or
# "[poison]" (every attempt), injected by an instrumentation (project/faults.py, installed in
# INTEGRATION_EVENTS above). Set IE_DEMO_FAULTS=0 to turn it off.
DEMO_FAULT_INJECTION = os.environ.get("IE_DEMO_FAULTS", "1") == "1"

# The configuration docs/logging.md recommends (a root handler; INFO from this library and
# django-q2), plus two knobs for the demo: IE_LOG_FILE also writes every record to a file and
# IE_CONSOLE_LOG_LEVEL raises the console's threshold. scripts/demo.sh sets var/demo.log and
# WARNING, so that the console shows problems and the admin credentials stay in view.
_LOG_HANDLERS: dict[str, dict[str, Any]] = {
    "console": {"class": "logging.StreamHandler", "formatter": "plain",
                "level": os.environ.get("IE_CONSOLE_LOG_LEVEL", "NOTSET")},
}
if os.environ.get("IE_LOG_FILE"):
    _LOG_HANDLERS["file"] = {"class": "logging.FileHandler", "formatter": "plain",
                             "filename": os.environ["IE_LOG_FILE"]}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"},
    },
    "handlers": _LOG_HANDLERS,
    "root": {"handlers": list(_LOG_HANDLERS), "level": "WARNING"},
    "loggers": {
        "integration_events": {"level": os.environ.get("IE_LOG_LEVEL", "INFO")},
        "django-q": {"level": "INFO"},
        # Through the root handlers (instead of Django's own console handler, which would
        # print its warnings a second time), so the demo's threshold applies to them too.
        "django": {"level": "INFO"},
        "django.server": {"handlers": list(_LOG_HANDLERS), "level": "INFO", "propagate": False},
    },
}
