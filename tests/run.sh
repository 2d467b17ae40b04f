#!/usr/bin/env bash
# `make test`: the unit tests and two groups of e2e tests in three pytest processes side by side.
# The e2e pipelines run mostly on one core, so on the 2-core machines this takes about half the
# wall time of one process. The tests that share the session fixture `tiny_run`
# (tests/e2e/conftest.py) stay in one process, so it is built once; the self-contained ones run
# in the other. Each process has its own --basetemp. The unit tests print as they run, the e2e
# groups when they end (their logs are in $TMPDIR while they run). Exit status: the first
# non-zero one. Arguments go to every process (`make test ARGS="-k parity"`).
set -u
py=${PYTHON:-.venv/bin/python}
self_contained=(tests/e2e/test_beam_cli.py tests/e2e/test_faults.py tests/e2e/test_reproducible.py)
ignore=()
for f in "${self_contained[@]}"; do ignore+=("--ignore=$f"); done
tmp=$(mktemp -d)

"$py" -m pytest -q -p no:cacheprovider -m e2e --basetemp="$tmp/e2e-self" \
    "${self_contained[@]}" "$@" > "$tmp/e2e-self.log" 2>&1 &
self_pid=$!
"$py" -m pytest -q -p no:cacheprovider -m e2e --basetemp="$tmp/e2e-tiny" \
    tests/e2e "${ignore[@]}" "$@" > "$tmp/e2e-tiny.log" 2>&1 &
tiny_pid=$!
echo "e2e tests running in the background: tail -f $tmp/e2e-self.log $tmp/e2e-tiny.log"

"$py" -m pytest -q -p no:cacheprovider -m "not e2e" --basetemp="$tmp/unit" "$@"
rc=$?
for group in self tiny; do
  pid_var="${group}_pid"
  wait "${!pid_var}"
  group_rc=$?
  echo "== e2e ($group) =="
  cat "$tmp/e2e-$group.log"
  # pytest exits 5 when a selection (e.g. ARGS="-k ...") leaves a group no test: not a failure
  if [ "$group_rc" -ne 0 ] && [ "$group_rc" -ne 5 ] && [ "$rc" -eq 0 ]; then rc=$group_rc; fi
done
[ "$rc" -eq 5 ] && rc=0
exit "$rc"
