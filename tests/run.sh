#!/usr/bin/env bash
# `make test`: the unit tests and the e2e tests in three pytest processes side by side. The e2e
# pipelines keep about one core busy each, so on the 2-core machines they run in two groups
# (tests/e2e/conftest.py: the tests that share the session's tiny pipeline run, and those that run
# their own), with the unit tests beside them. One e2e process took ~60 min of CI's 90 (stop 23).
# Each process has its own --basetemp. The unit tests print as they run, the e2e tests when they
# end (their logs are in $TMPDIR meanwhile). Exit status: the first non-zero one. Arguments go to
# every process (`make test ARGS="-k parity"`).
set -u
py=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)

pids=()
for group in shared own; do
  PINRANK_E2E_GROUP=$group "$py" -m pytest -q -p no:cacheprovider -m e2e --durations=5 \
    --basetemp="$tmp/e2e-$group" "$@" > "$tmp/e2e-$group.log" 2>&1 &
  pids+=($!)
  echo "e2e tests ($group) running in the background: tail -f $tmp/e2e-$group.log"
done

"$py" -m pytest -q -p no:cacheprovider -m "not e2e" --basetemp="$tmp/unit" "$@"
rc=$?
# pytest exits 5 when a selection (ARGS="-k ...") leaves a process no test: not a failure
[ "$rc" -eq 5 ] && rc=0
for i in 0 1; do
  group=$([ "$i" -eq 0 ] && echo shared || echo own)
  wait "${pids[$i]}"
  e2e_rc=$?
  echo "== e2e ($group) =="
  cat "$tmp/e2e-$group.log"
  [ "$e2e_rc" -eq 5 ] && e2e_rc=0
  [ "$rc" -eq 0 ] && rc=$e2e_rc
done
exit "$rc"
