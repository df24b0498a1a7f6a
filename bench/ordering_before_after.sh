#!/usr/bin/env bash
# Unkeyed throughput before and after ordering keys, alternating the two checkouts so that
# both see the same machine load: bench/ordering_before_after.sh BEFORE_CHECKOUT [RUNS]
# (BEFORE_CHECKOUT: a worktree of the commit before ordering keys; PostgreSQL by default).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
before=${1:?usage: $0 BEFORE_CHECKOUT [RUNS]}
runs=${2:-7}
export IE_DB=${IE_DB:-postgres}
cp "$here/bench/ordering.py" "$before/bench/ordering.py"
for i in $(seq "$runs"); do
  sides="before after"; [ $((i % 2)) = 0 ] && sides="after before"
  for side in $sides; do
    dir=$here; [ "$side" = before ] && dir=$before
    out=$(cd "$dir" && IE_DB_NAME="bench_ordering_$side" "$here/.venv/bin/python" \
      bench/ordering.py --unkeyed-only --rounds 3 "${@:3}")
    wall=$(echo "$out" | sed -n 's/.*median: unkeyed \([0-9]*\).*/\1/p')
    cpu=$(echo "$out" | sed -n 's/.*per CPU second.*unkeyed \([0-9]*\).*/\1/p')
    echo "$i $side wall=$wall/s cpu=$cpu/CPU-s"
  done
done
