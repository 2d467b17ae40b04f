#!/usr/bin/env bash
# Starts a local Redis for the action store (serving/action_store.py) on loopback, without
# persistence (the store is rebuilt by `pinrank ingest` / `pinrank embed-users --store`).
# Idempotent: if something on the port already answers PING, nothing is started.
# Usage: redis-local.sh ; env REDIS_PORT (6379), REDIS_DIR (runs/redis: pid and log files).
# Needs Debian's redis-server (apt-get install redis-server).
set -euo pipefail
port="${REDIS_PORT:-6379}"
dir="${REDIS_DIR:-runs/redis}"
if ! command -v redis-server >/dev/null; then
  echo "redis-server not found: apt-get install redis-server" >&2
  exit 1
fi
ping() { redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; }
if ping; then
  echo "redis already answering on 127.0.0.1:$port"
  exit 0
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --dir "$dir" --pidfile "$dir/redis-$port.pid" --logfile "$dir/redis-$port.log"
for _ in $(seq 50); do
  if ping; then
    echo "redis started on 127.0.0.1:$port (redis://127.0.0.1:$port/0; log $dir/redis-$port.log)"
    exit 0
  fi
  sleep 0.1
done
echo "redis did not answer on 127.0.0.1:$port; see $dir/redis-$port.log" >&2
exit 1
