# Sourced by scripts/test.sh: run suites, record what each did, print a plain summary.
# Kept apart so that tests/test_scripts.py can drive run_pytest and summary on a fake suite.

results=()   # "name|status|detail"
failed=0
total_passed=0
total_failed=0
require_all=${IE_REQUIRE_ALL:-0}
suite_started=$(date +%s)

note() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
record() { results+=("$1|$2|$3"); }
skip() {
  record "$1" "SKIPPED" "$2"
  if [ "$require_all" = 1 ]; then failed=1; fi
}

run_pytest() {  # run_pytest NAME PYTHON ENV... -- PYTEST_ARGS...
  local name=$1 py=$2; shift 2
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  note "pytest: $name"
  local out; out=$(mktemp)
  env "${envs[@]}" "$py" -m pytest -p no:cacheprovider "$@" 2>&1 | tee "$out"
  local rc=${PIPESTATUS[0]}
  local line; line=$(grep -E '^=*[ ]*[0-9]+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed).* in [0-9.]+s' "$out" | tail -1)
  line=$(sed -E 's/^=+ //; s/ =+$//' <<<"$line")
  local p f
  p=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+' || echo 0)
  f=$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '[0-9]+' || echo 0)
  rm -f "$out"
  # pytest's exit codes: 0 passed, 1 tests failed, 2 interrupted (errors during collection
  # stop the run before any test), 3 internal error, 4 usage error, 5 nothing collected.
  case "$rc" in
    0) record "$name" "ok" "$line" ;;
    1) record "$name" "FAILED" "$line"; total_failed=$((total_failed + f)); failed=1 ;;
    2) record "$name" "ERROR" "errors during collection, no tests ran (see the errors above)"
       failed=1 ;;
    5) record "$name" "ERROR" "collected nothing: no test ran (wrong path or marker?)"
       failed=1 ;;
    *) record "$name" "ERROR" "pytest exited with $rc (internal or usage error, see above)"
       failed=1 ;;
  esac
  [ "$rc" -eq 0 ] || [ "$rc" -eq 1 ] || return 0
  total_passed=$((total_passed + p))
}

step() {  # step NAME CMD...: the summary gives its time (CI's budget is watched by it)
  local name=$1; shift
  note "$name"
  local started; started=$(date +%s)
  if "$@"; then
    record "$name" "ok" "$(( $(date +%s) - started ))s"
  else
    record "$name" "FAILED" "see above ($(( $(date +%s) - started ))s)"; failed=1
  fi
}

summary() {  # prints the table and the totals; returns non-zero if anything failed
  local elapsed=$(( $(date +%s) - suite_started ))
  note "summary (${elapsed}s)"
  local r name status detail
  for r in "${results[@]}"; do
    IFS='|' read -r name status detail <<<"$r"
    printf '  %-8s %s %s\n' "$status" "$name" "${detail:+— $detail}"
  done
  if [ "$require_all" != 1 ] && printf '%s\n' "${results[@]}" | grep -q '|SKIPPED|'; then
    echo "  (skipped runs above did not run here; CI runs them all)"
  fi
  if printf '%s\n' "${results[@]}" | grep -q '|ERROR|'; then
    echo "  (ERROR: a suite did not run its tests at all; its tests are not counted below)"
  fi
  echo
  echo "${total_passed} passed, ${total_failed} failed"
  return $failed
}
