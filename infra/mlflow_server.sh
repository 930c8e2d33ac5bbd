#!/usr/bin/env bash
# Start a real MLflow tracking server (tracking, model registry, proxied artifacts) in the foreground.
#
#   infra/mlflow_server.sh                      # http://127.0.0.1:5000, state in <repo>/mlruns/server/
#   MLFLOW_PORT=5001 MLFLOW_HOME=/srv/mlflow infra/mlflow_server.sh
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000   # then: python flows/leap_flow.py run
#
# Settings (environment):
#   MLFLOW_HOST     interface to bind (default 127.0.0.1: this machine only). Binding 0.0.0.0 exposes it to
#                   the network; also pass --allowed-hosts in MLFLOW_SERVER_ARGS then, and put auth in front.
#   MLFLOW_PORT     port (default 5000)
#   MLFLOW_HOME     folder holding the SQLite backend (mlflow.db) and, by default, the artifacts (artifacts/)
#   MLFLOW_ARTIFACTS_DESTINATION  where the server puts artifacts: s3://bucket/prefix keeps them off this disk
#                   (boto3 credentials, and AWS_ENDPOINT_URL_S3 for MinIO or another S3-compatible store);
#                   clients upload and download through the server and need no S3 credentials of their own
#   MLFLOW_WORKERS  server worker processes (default 1: a small machine)
#   MLFLOW_SERVER_ARGS  extra arguments for `mlflow server`
# The process is exec'd, so its PID is the server's: stop it with kill <pid> (or Ctrl-C).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
home="${MLFLOW_HOME:-$repo/mlruns/server}"
workers="${MLFLOW_WORKERS:-1}"

mkdir -p "$home/artifacts"
home="$(cd "$home" && pwd)"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$home/artifacts}"
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"
# The server's job runner (huey workers) serves GenAI features this project does not use; off saves
# seven processes. Set MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true to have it.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

# Use the mlflow beside this script's python when a virtualenv is active or present, else PATH's.
mlflow_bin="mlflow"
if [[ -z "${VIRTUAL_ENV:-}" && -x "$repo/.venv/bin/mlflow" ]]; then
  mlflow_bin="$repo/.venv/bin/mlflow"
fi

echo "MLflow server: http://$host:$port (backend sqlite:///$home/mlflow.db, artifacts $artifacts)" >&2
echo "  export MLFLOW_TRACKING_URI=http://$host:$port" >&2
# shellcheck disable=SC2086  # MLFLOW_SERVER_ARGS is a list of words on purpose
exec "$mlflow_bin" server \
  --host "$host" --port "$port" --workers "$workers" \
  --backend-store-uri "sqlite:///$home/mlflow.db" \
  --serve-artifacts --artifacts-destination "$artifacts" \
  ${MLFLOW_SERVER_ARGS:-}
