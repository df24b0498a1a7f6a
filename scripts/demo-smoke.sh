#!/usr/bin/env bash
# Runs the README's demo command the way a person would, in a throw-away var directory:
# wait for the admin to answer, log in with the printed credentials, drive a little load,
# see the cluster deliver it, check the credentials are repeated once both processes are up
# and the console stays readable, then press Ctrl+C and check both processes stop.
set -uo pipefail
cd "$(dirname "$0")/.."
export IE_VAR_DIR; IE_VAR_DIR=$(mktemp -d /tmp/ie-demo-XXXXXX)
PORT=${PORT:-18765}
URL_RE="Admin: *http://127.0.0.1:$PORT/admin/"
log="$IE_VAR_DIR/console.log"  # what the terminal shows (the demo keeps its full log in demo.log)
fail() { echo "demo smoke: FAILED: $*"; echo "--- demo output ---"; tail -40 "$log"; cleanup; exit 1; }
ours() {  # PIDs of processes started with this IE_VAR_DIR in their environment
  local p
  for p in $(pgrep -f "manage.py (qcluster|runserver)"); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "IE_VAR_DIR=$IE_VAR_DIR" && echo "$p"
  done
}
cleanup() { kill -KILL -- "-$DPID" 2>/dev/null; for p in $(ours); do kill -KILL "$p" 2>/dev/null; done; true; }

# Its own process group, like a terminal's foreground job, so that "Ctrl+C" (SIGINT to the
# group) reaches it the way a terminal sends it. Started through Python so that SIGINT is not
# ignored in it (a shell's background jobs ignore SIGINT, and bash cannot trap a signal that
# was ignored when it started).
DPID=$(PORT=$PORT python3 - "$log" <<'PY'
import signal, subprocess, sys
log = open(sys.argv[1], "wb")
p = subprocess.Popen(["./scripts/demo.sh"], stdout=log, stderr=subprocess.STDOUT,
                     stdin=subprocess.DEVNULL, start_new_session=True,
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
print(p.pid)
PY
)
for _ in $(seq 1 240); do
  curl -sf -o /dev/null "http://127.0.0.1:$PORT/admin/login/" && break
  kill -0 "$DPID" 2>/dev/null || fail "demo.sh exited early"
  sleep 0.5
done
curl -sf -o /dev/null "http://127.0.0.1:$PORT/admin/login/" || fail "the admin never answered"
user=$(grep -oE 'username: *[^ ]+' "$log" | head -1 | awk '{print $2}')
password=$(grep -oE 'password: *[^ ]+' "$log" | head -1 | awk '{print $2}')
[ -n "$password" ] || fail "no admin password printed"

jar="$IE_VAR_DIR/cookies"
curl -sf -c "$jar" -o "$IE_VAR_DIR/login.html" "http://127.0.0.1:$PORT/admin/login/"
token=$(grep -oE 'csrftoken\s+[^ ]+' "$jar" | awk '{print $2}' | tail -1)
code=$(curl -s -b "$jar" -c "$jar" -o /dev/null -w '%{http_code}' \
  -H "Referer: http://127.0.0.1:$PORT/admin/login/" \
  --data-urlencode "csrfmiddlewaretoken=$token" --data-urlencode "username=$user" \
  --data-urlencode "password=$password" --data-urlencode "next=/admin/" \
  "http://127.0.0.1:$PORT/admin/login/?next=/admin/")
[ "$code" = 302 ] || fail "login with the printed credentials answered $code"
# Into a file first: with pipefail, `curl | grep -q` fails whenever grep quits early and
# curl then gets SIGPIPE.
curl -sf -b "$jar" -o "$IE_VAR_DIR/index.html" "http://127.0.0.1:$PORT/admin/" \
  || fail "the admin index did not answer after login"
grep -q "Integration events" "$IE_VAR_DIR/index.html" \
  || fail "the admin index does not show the Integration events app"

IE_DB=sqlite DJANGO_SETTINGS_MODULE=project.settings .venv/bin/python manage.py simulate \
  --count 10 --rate 50 --poison 0 --flaky 0 >"$IE_VAR_DIR/simulate.log" 2>&1 \
  || fail "simulate failed: $(tail -5 "$IE_VAR_DIR/simulate.log")"
delivered=0
for _ in $(seq 1 120); do
  delivered=$(IE_DB=sqlite DJANGO_SETTINGS_MODULE=project.settings .venv/bin/python manage.py shell -c \
    "from integration_events.models import ReceivedMessage as R; print(R.objects.filter(status='succeeded').count())" 2>/dev/null | tail -1)
  [ "${delivered:-0}" -gt 0 ] && break
  sleep 0.5
done
[ "${delivered:-0}" -gt 0 ] || fail "qcluster delivered nothing"

# Once both processes are up the demo repeats the address and the credentials, below
# runserver's start-up lines, so they are on screen when the server is; and the console stays
# readable: the sample handlers' e-mails went to files, nudges print no "Enqueued" lines.
for _ in $(seq 1 40); do grep -q "Demo ready" "$log" && break; sleep 0.5; done
grep -q "Demo ready: runserver and qcluster are up" "$log" \
  || fail "no 'Demo ready' banner once runserver and qcluster were up"
started=$(grep -n "Quit the server with" "$log" | head -1 | cut -d: -f1)
repeated=$(grep -n "password: *$password\$" "$log" | tail -1 | cut -d: -f1)
[ -n "$started" ] && [ -n "$repeated" ] && [ "$repeated" -gt "$started" ] \
  || fail "the credentials are not repeated after start-up (line ${repeated:-none}, runserver up at line ${started:-?})"
grep -q "$URL_RE" "$log" || fail "the banner does not give the admin's address on port $PORT"
grep -q "^Content-Type:\|^Subject:" "$log" && fail "e-mails were printed to the console"
grep -q "Enqueued" "$log" && fail "nudges printed django-q2's 'Enqueued' lines"
compgen -G "$IE_VAR_DIR/mail/*" >/dev/null || fail "no e-mails were written to $IE_VAR_DIR/mail/"

kill -INT -- "-$DPID"
for _ in $(seq 1 200); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$DPID" 2>/dev/null && fail "Ctrl+C did not stop the demo within 20 s"
sleep 1
left=$(ours)
[ -z "$left" ] || fail "processes left running after Ctrl+C: $left"
echo "demo smoke: ok (admin answered, login worked, $delivered deliveries, credentials repeated once up, Ctrl+C stopped both)"
rm -rf "$IE_VAR_DIR"
