#!/usr/bin/env bash
# Set up and run the whole test suite: lint, types, checks, then the suite on every database
# and Python/Django combination this machine can run. Says plainly what it skipped.
#
#   ./scripts/test.sh            everything available here
#   ./scripts/test.sh -k claims  extra arguments go to every pytest run
#
# Environment: IE_REQUIRE_ALL=1 turns every skipped database/version into a failure (CI);
# IE_SETUP_ONLY=1 only creates the virtualenvs; IE_SUITES_ONLY=1 leaves out the static checks
# and the demo and benchmark smokes (only the pytest runs); IE_NEWEST_ONLY=1 leaves out the
# Python 3.11 + Django 5.2 run.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh

. scripts/_suite.sh

# -- interpreters and virtualenvs ---------------------------------------------------------
PY_NEW=$(newest_python) || exit 2
extras="dev,postgres,redis,mssql,browser,amqp,otel,prometheus"
if pkg-config --exists libmariadb 2>/dev/null || pkg-config --exists mysqlclient 2>/dev/null; then
  extras="$extras,mysql"
fi
note "setting up .venv ($("$PY_NEW" --version 2>&1))"
make_venv .venv "$PY_NEW" "$extras" || exit 2
VPY=.venv/bin/python
DJ_NEW=$($VPY -c 'import django; print(django.get_version())')
# The oldest supported pair, Python 3.11 + Django 5.2 LTS, in a venv of its own.
venv_old=""
if PY311=$(find_python 3.11); then
  note "setting up .venv-py311-dj52 ($("$PY311" --version 2>&1), Django 5.2)"
  if make_venv .venv-py311-dj52 "$PY311" "dev" "django>=5.2,<5.3"; then
    venv_old=.venv-py311-dj52
  else
    venv_old=failed
  fi
fi
if [ "${IE_SETUP_ONLY:-0}" = 1 ]; then
  echo "set up (IE_SETUP_ONLY=1): not running anything"
  exit 0
fi

# -- RabbitMQ: the broker bridge's tests and bench need one (with rabbitmqctl) ----------------
rabbit_up() { $VPY - <<'PY' 2>/dev/null
import shutil, socket, sys
socket.create_connection(("127.0.0.1", 5672), timeout=3).close()
sys.exit(0 if shutil.which("rabbitmqctl") else 1)
PY
}
rabbit=0
if rabbit_up; then
  rabbit=1
else
  skip "RabbitMQ" "no broker at 127.0.0.1:5672 (or no rabbitmqctl): the bridge tests that need one skipped themselves; start it (rabbitmq-server -detached) to run them"
fi

if [ "${IE_SUITES_ONLY:-0}" != 1 ]; then
# -- static checks ------------------------------------------------------------------------
step "ruff" $VPY -m ruff check .
step "mypy" $VPY -m mypy integration_events accounts equipment files project
step "import layers (lint-imports)" .venv/bin/lint-imports --no-cache
step "manage.py check" env DJANGO_SETTINGS_MODULE=project.settings IE_VAR_DIR=var/check \
  $VPY manage.py check --fail-level WARNING
step "makemigrations --check" env DJANGO_SETTINGS_MODULE=tests.settings IE_VAR_DIR=var/check \
  $VPY manage.py makemigrations --check --dry-run

# -- the README's demo command, run as a person would (Ctrl+C included) ---------------------
if command -v curl >/dev/null 2>&1; then
  step "demo smoke (./scripts/demo.sh)" ./scripts/demo-smoke.sh
else
  skip "demo smoke" "curl is not installed"
fi

# -- the benchmark harness runs (a smoke: it asserts no times) --------------------------------
step "bench smoke (bench/run.py --smoke)" $VPY bench/run.py --smoke
step "bench smoke (bench/flow.py --smoke)" $VPY bench/flow.py --smoke
if [ $rabbit = 1 ]; then
  step "bridge bench smoke (bench/bridge.py --smoke)" $VPY bench/bridge.py --smoke
fi
fi

# -- the suite ----------------------------------------------------------------------------
# -m "": every marker (a plain pytest leaves out cluster, reliability and browser tests).
run_pytest "SQLite, Python $($VPY -c 'import platform; print(platform.python_version())'), Django $DJ_NEW" \
  $VPY IE_DB=sqlite -- -m "" "$@"

pg_up() { $VPY - <<'PY' 2>/dev/null
import psycopg
psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=3).close()
PY
}
if pg_up; then
  run_pytest "PostgreSQL, Django $DJ_NEW" $VPY IE_DB=postgres -- -m "" "$@"
else
  skip "PostgreSQL" "no server at 127.0.0.1:5432 (user postgres); start one to run the suite on it"
fi

maria_up() { $VPY - <<'PY' 2>/dev/null
import MySQLdb
MySQLdb.connect(host="127.0.0.1", port=3306, user="root", passwd="", connect_timeout=3).close()
PY
}
if ! $VPY -c 'import MySQLdb' 2>/dev/null; then
  skip "MariaDB" "the mysqlclient driver is not installed (needs libmariadb-dev and pkg-config: scripts/system-deps.sh)"
elif maria_up; then
  run_pytest "MariaDB (claims, concurrency, locking, cluster), Django $DJ_NEW" $VPY IE_DB=mysql \
    -- -m "dbspecific or cluster or reliability" "$@"
else
  skip "MariaDB" "no server at 127.0.0.1:3306 (user root); start one to run the locking tests on it"
fi

# -- the oldest supported pair: Python 3.11 + Django 5.2 LTS --------------------------------
if [ "${IE_NEWEST_ONLY:-0}" = 1 ]; then
  record "Python 3.11 + Django 5.2" "left out" "IE_NEWEST_ONLY=1 (the newest Python only)"
elif [ "$venv_old" = failed ]; then
  record "Python 3.11 + Django 5.2" "FAILED" "could not create .venv-py311-dj52"; failed=1
elif [ -n "$venv_old" ]; then
  DJ_OLD=$($venv_old/bin/python -c 'import django; print(django.get_version())')
  run_pytest "SQLite, Python 3.11, Django $DJ_OLD" $venv_old/bin/python IE_DB=sqlite \
    -- -m "not browser and not reliability" "$@"
else
  skip "Python 3.11 + Django 5.2" "no python3.11 found"
fi

# -- summary ------------------------------------------------------------------------------
summary
