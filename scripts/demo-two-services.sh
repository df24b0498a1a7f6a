#!/usr/bin/env bash
# Two services over RabbitMQ: the demo project twice, each with its own SQLite database,
# qcluster, integration_events_consume and admin, talking in DotNetCore.CAP's wire format.
#   accounts   (the accounts app)          http://127.0.0.1:8001/admin/
#   inventory  (the equipment and files apps) http://127.0.0.1:8002/admin/
# It registers a user in accounts, stores two files for them and lends them a drill in
# inventory, deletes the user in accounts, and shows inventory purging the files and taking
# the drill back (and accounts hearing of it). Then both keep running until Ctrl+C.
#
#   ./scripts/demo-two-services.sh
#   ./scripts/demo-two-services.sh --once     the story only, then stop
#   IE_AMQP_URL=amqp://user:password@host:5672/vhost ./scripts/demo-two-services.sh
#   IE_AMQP_EXCHANGE=... IE_AMQP_QUEUE_PREFIX=...   another exchange; a prefix for the
#                                                   services' queues (accounts.v1, inventory.v1)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh

ONCE=0
[ "${1:-}" = "--once" ] && ONCE=1
if ! .venv/bin/python -c 'import django, pika' 2>/dev/null; then
  make_venv .venv "$(newest_python)" "amqp" || { echo "error: could not install into .venv" >&2; exit 1; }
fi
VPY=.venv/bin/python
VAR=${IE_VAR_DIR:-var}/two-services
export DJANGO_SETTINGS_MODULE=project.settings IE_DB=sqlite IE_DEMO_FAULTS=0
export IE_AMQP_URL=${IE_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672//}
export IE_AMQP_EXCHANGE=${IE_AMQP_EXCHANGE:-integration-events.demo}

if ! $VPY - <<'PY'
import os, sys
import pika
from integration_events.bridges.amqp import connection_parameters
try:
    pika.BlockingConnection(connection_parameters(os.environ["IE_AMQP_URL"], timeout=5,
                                                  role="demo check")).close()
except Exception as exc:
    sys.exit(f"error: no RabbitMQ at {os.environ['IE_AMQP_URL'].split('@')[-1]} ({exc}).\n"
             "Start it (rabbitmq-server -detached) or set IE_AMQP_URL.")
PY
then exit 1; fi

pids=()
# run SERVICE ARGS...: manage.py in SERVICE's environment (its own database and var/)
run() {
  local service=$1; shift
  IE_SERVICE=$service IE_VAR_DIR="$VAR/$service" IE_SQLITE_PATH="$VAR/$service/db.sqlite3" \
    IE_LOG_FILE="$VAR/$service/service.log" IE_CONSOLE_LOG_LEVEL=WARNING \
    $VPY manage.py "$@"
}
start() {  # start SERVICE ARGS...: in the background, in its own session (see demo.sh)
  local service=$1; shift
  mkdir -p "$VAR/$service"
  IE_SERVICE=$service IE_VAR_DIR="$VAR/$service" IE_SQLITE_PATH="$VAR/$service/db.sqlite3" \
    IE_LOG_FILE="$VAR/$service/service.log" IE_CONSOLE_LOG_LEVEL=WARNING \
    setsid $VPY manage.py "$@" >>"$VAR/$service/$1.out" 2>&1 &
  pids+=($!)
}
stop() {
  local rc=$?
  trap - INT TERM EXIT
  echo "==> stopping both services"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 150); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  exit "$rc"
}
trap stop INT TERM EXIT
# wait_until SERVICE SQL WHAT: poll SERVICE's database until SQL returns a true value
wait_until() {
  $VPY - "$VAR/$1/db.sqlite3" "$2" "$3" <<'PY'
import sqlite3, sys, time
path, sql, what = sys.argv[1:]
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    with sqlite3.connect(path, timeout=20) as db:
        if db.execute(sql).fetchone()[0]:
            sys.exit(0)
    time.sleep(0.2)
sys.exit(f"error: timed out waiting for {what}; see the logs under the var/ directory")
PY
}

for service in accounts inventory; do
  mkdir -p "$VAR/$service"
  echo "==> $service: migrating $VAR/$service/db.sqlite3, starting qcluster and integration_events_consume"
  run $service migrate --no-input -v 0
  start $service qcluster
  start $service integration_events_consume
done
if [ $ONCE = 0 ]; then
  for pair in accounts:8001 inventory:8002; do
    service=${pair%:*}; port=${pair#*:}
    password=$($VPY -c 'import secrets; print(secrets.token_urlsafe(12))')
    DJANGO_SUPERUSER_PASSWORD=$password run $service createsuperuser --no-input \
      --username admin --email admin@example.com >/dev/null 2>&1 || \
      run $service shell -v 0 -c "from django.contrib.auth.models import User; u = User.objects.get(username='admin'); u.set_password('$password'); u.save()"
    start $service runserver "127.0.0.1:$port" --noreload
    printf -v "pw_$service" '%s' "$password"
  done
fi

echo "==> accounts: registering ada"
user=$(run accounts shell -v 0 -c "from accounts.services import register_user; from django.contrib.auth.models import User; u = User.objects.filter(username='ada').first() or register_user(username='ada', email='ada@example.com'); print(u.pk)" | tail -1)
wait_until inventory "SELECT count(*) FROM equipment_knownuser WHERE user_id=$user AND deleted_at IS NULL" "UserRegistered to reach inventory"
echo "    inventory knows user $user (UserRegistered came over RabbitMQ)"
echo "==> inventory: two files for ada, and she borrows a drill"
run inventory shell -v 0 -c "from files.services import store_file; from equipment.services import create_equipment, check_out; store_file(name='cv.txt', content=b'ada', owner_id=$user); store_file(name='photo.txt', content=b'ada', owner_id=$user); check_out(create_equipment(name='Drill', category='tools').pk, $user)"
wait_until accounts "SELECT count(*) FROM accounts_equipmentholding WHERE user_id=$user" "EquipmentCheckedOut to reach accounts"
echo "    accounts knows ada holds the drill (EquipmentCheckedOut came back)"
echo "==> accounts: deleting ada"
run accounts shell -v 0 -c "from accounts.services import delete_user; delete_user($user)"
wait_until inventory "SELECT count(*) = 0 FROM files_storedfile WHERE owner_id=$user" "UserDeleted to purge the files"
echo "    inventory purged ada's files and checked the drill in"
wait_until accounts "SELECT count(*) = 0 FROM accounts_equipmentholding WHERE user_id=$user" "EquipmentCheckedIn to reach accounts"
echo "    accounts heard the drill is back (EquipmentCheckedIn)"

if [ $ONCE = 1 ]; then
  echo "Two-services demo done."
  exit 0
fi
cat <<MSG

  ============================================================================
  Two services over RabbitMQ ($IE_AMQP_EXCHANGE on ${IE_AMQP_URL##*@}):
    accounts:   http://127.0.0.1:8001/admin/   admin / ${pw_accounts}
    inventory:  http://127.0.0.1:8002/admin/   admin / ${pw_inventory}
    Look at:    Published messages (origin "rabbit": received over the bridge),
                Received messages (group "bridge:rabbit": sent), Nodes (consume:rabbit@...)
    Logs:       $VAR/<service>/service.log
    Stop:       Ctrl+C (stops all six processes)
  ============================================================================

MSG
wait -n "${pids[@]}" || true
