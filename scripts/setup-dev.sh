#!/usr/bin/env bash
# Create .venv (newest Python found, newest Django) with everything the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
PY=$(newest_python)
extras="dev,postgres,redis,amqp,otel,prometheus"
# The MariaDB driver compiles against libmariadb; include it only where that can work.
if pkg-config --exists libmariadb 2>/dev/null || pkg-config --exists mysqlclient 2>/dev/null; then
  extras="$extras,mysql"
fi
make_venv .venv "$PY" "$extras"
