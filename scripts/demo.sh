#!/usr/bin/env bash
# Set up and run the demo on SQLite: virtualenv, install, migrate, demo data and an admin
# user (credentials printed), then runserver and qcluster together. Ctrl+C stops both.
#
#   ./scripts/demo.sh              http://127.0.0.1:8000/admin/
#   PORT=8001 ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh

PY=$(newest_python)
make_venv .venv "$PY" "" || { echo "error: could not install the project into .venv" >&2; exit 1; }
VPY=.venv/bin/python
export DJANGO_SETTINGS_MODULE=project.settings IE_DB=sqlite
PORT=${PORT:-8000}

echo "==> migrating the SQLite database (var/db.sqlite3)"
$VPY manage.py migrate --no-input -v 0
echo "==> demo data and admin user"
$VPY manage.py seed_demo

# qcluster in its own session: the terminal's Ctrl+C must not reach its workers directly
# (django-q2 hangs when a signal hits its whole process group); we signal its main process.
setsid $VPY manage.py qcluster &
QPID=$!
$VPY manage.py runserver "127.0.0.1:$PORT" &
WPID=$!

stop() {
  trap - INT TERM EXIT
  echo
  echo "==> stopping runserver and qcluster"
  kill -TERM "$WPID" 2>/dev/null || true
  kill -TERM "$QPID" 2>/dev/null || true
  for _ in $(seq 1 150); do
    kill -0 "$QPID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$QPID" 2>/dev/null; then
    echo "qcluster did not stop within 15 s; killing it"
    kill -KILL -- "-$QPID" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  echo "stopped."
}
trap stop INT TERM EXIT

cat <<MSG

  Demo running:  http://127.0.0.1:$PORT/admin/   (log in with the credentials above)
  Dashboard:     http://127.0.0.1:$PORT/admin/integration_events/
  Load:          in another terminal: .venv/bin/python manage.py simulate
  Stop:          Ctrl+C (stops runserver and qcluster)

MSG
wait -n "$WPID" "$QPID" || true
