#!/usr/bin/env bash
# Readiness check for tensorflow_model_server: succeeds only when every model listed in
# models.config has a version in state AVAILABLE (ModelService GetModelStatus, through its REST
# mapping GET /v1/models/<name>). Uses bash's /dev/tcp because the tensorflow/serving image has
# no curl, python or grpc tools; TF Serving implements no grpc.health.v1 service, so a native
# Kubernetes gRPC probe cannot be used.
# Usage: ready.sh [models.config] ; env REST_PORT (8501), PROBE_TIMEOUT_S (2).
set -euo pipefail
config="${1:-/config/models.config}"
port="${REST_PORT:-8501}"
models=$(sed -n 's/^[[:space:]]*name:[[:space:]]*"\([^"]*\)".*/\1/p' "$config")
if [ -z "$models" ]; then
  echo "no models in $config" >&2
  exit 1
fi
for model in $models; do
  exec 3<>"/dev/tcp/127.0.0.1/${port}"
  printf 'GET /v1/models/%s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$model" >&3
  body=$(timeout "${PROBE_TIMEOUT_S:-2}" cat <&3) || { echo "$model: no answer" >&2; exit 1; }
  exec 3<&-
  if ! grep -Eq '"state"[[:space:]]*:[[:space:]]*"AVAILABLE"' <<<"$body"; then
    echo "$model: no AVAILABLE version" >&2
    exit 1
  fi
done
