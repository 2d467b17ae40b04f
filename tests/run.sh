#!/usr/bin/env bash
# `make test`: the e2e tests and the unit tests in two pytest processes side by side. The e2e
# pipelines keep about one core busy, so on the 2-core machines the unit tests run beside them
# almost for free (one process after the other took 69 min on a clean clone, 55 of them e2e).
# Each process has its own --basetemp. The unit tests print as they run, the e2e tests when they
# end (their log is in $TMPDIR meanwhile). Exit status: the first non-zero one. Arguments go to
# both processes (`make test ARGS="-k parity"`).
set -u
py=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)

"$py" -m pytest -q -p no:cacheprovider -m e2e --basetemp="$tmp/e2e" "$@" > "$tmp/e2e.log" 2>&1 &
e2e_pid=$!
echo "e2e tests running in the background: tail -f $tmp/e2e.log"

"$py" -m pytest -q -p no:cacheprovider -m "not e2e" --basetemp="$tmp/unit" "$@"
rc=$?
wait "$e2e_pid"
e2e_rc=$?
echo "== e2e =="
cat "$tmp/e2e.log"
# pytest exits 5 when a selection (ARGS="-k ...") leaves a process no test: not a failure
[ "$rc" -eq 5 ] && rc=0
[ "$e2e_rc" -eq 5 ] && e2e_rc=0
[ "$rc" -eq 0 ] && rc=$e2e_rc
exit "$rc"
