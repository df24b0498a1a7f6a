#!/usr/bin/env bash
# Set up and run the demo on SQLite: virtualenv, install, migrate, demo data and an admin
# user, then runserver and qcluster together; once both are up it prints the address and the
# credentials (again). Ctrl+C stops both.
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
URL="http://127.0.0.1:$PORT/admin/"
VAR=${IE_VAR_DIR:-var}
# A readable console: warnings and errors only (failing handlers, dead letters); every record,
# requests included, goes to var/demo.log, and the sample handlers' e-mails to var/mail/.
export IE_LOG_FILE="$VAR/demo.log" IE_CONSOLE_LOG_LEVEL=WARNING

echo "==> migrating the SQLite database ($VAR/db.sqlite3)"
$VPY manage.py migrate --no-input -v 0
echo "==> demo data and admin user"
seeded=$($VPY manage.py seed_demo --url "$URL")
printf '%s\n' "$seeded"
user=$(sed -n 's/^ *username: *//p' <<<"$seeded" | head -1)
password=$(sed -n 's/^ *password: *//p' <<<"$seeded" | head -1)

echo "==> starting runserver and qcluster (log: $VAR/demo.log, e-mails: $VAR/mail/)"
log_start=$(wc -c <"$IE_LOG_FILE" 2>/dev/null || echo 0)
# qcluster in its own session: the terminal's Ctrl+C must not reach its workers directly
# (django-q2 hangs when a signal hits its whole process group); we signal its main process.
setsid $VPY manage.py qcluster &
QPID=$!
$VPY manage.py runserver "127.0.0.1:$PORT" &
WPID=$!

stop() {
  local rc=$?
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
  exit "$rc"  # also when Ctrl+C came during the start-up wait: nothing more to print
}
trap stop INT TERM EXIT

# The credentials are repeated once both are up: the admin answers, and django-q2 has logged
# "Q Cluster <name> [<queue>] running." to the log since this start.
if $VPY - "$URL" "$IE_LOG_FILE" "$log_start" "$WPID" "$QPID" <<'WAIT'
import os, sys, time, urllib.request
url, log, start, pids = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
web = cluster = False
deadline = time.monotonic() + 90
while not (web and cluster) and time.monotonic() < deadline:
    for pid in pids:
        try:
            os.kill(int(pid), 0)
        except OSError:
            sys.exit(1)
    if not web:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            web = True
        except OSError:
            pass
    if not cluster:
        try:
            with open(log, "rb") as f:
                f.seek(start)
                cluster = b" running." in f.read()
        except OSError:
            pass
    time.sleep(0.3)
sys.exit(0 if web and cluster else 1)
WAIT
then
  ready="Demo ready: runserver and qcluster are up."
else
  ready="Warning: runserver or qcluster did not come up; see $VAR/demo.log."
fi

cat <<MSG

  ============================================================================
  $ready
    Admin:      $URL
      username: $user
      password: $password
    Dashboard:  ${URL}integration_events/
    Load:       in another terminal: .venv/bin/python manage.py simulate
    Log:        $VAR/demo.log (this console shows warnings and errors only)
    E-mails:    $VAR/mail/ (what the sample handlers send, one file per batch)
    Stop:       Ctrl+C (stops runserver and qcluster)
  ============================================================================

MSG
wait -n "$WPID" "$QPID" || true
