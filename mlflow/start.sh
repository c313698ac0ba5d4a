#!/usr/bin/env bash
# Start the MLflow tracking + model-registry server in the foreground (exec: the
# caller's pid is the server's, so `make down` can stop it by process group).
#
# Local defaults: SQLite + artifacts on disk under $MLFLOW_STORE_DIR, loopback only,
# one worker, no job-execution workers (the defaults start ~15 processes, ~2.5 GB).
# Production: set MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://... and
# MLFLOW_ARTIFACTS_DESTINATION=s3://bucket/prefix with MLFLOW_S3_ENDPOINT_URL,
# AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (see mlflow/README.md).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mlflow_bin="${MLFLOW_BIN:-$repo/.venv/bin/mlflow}"
if [[ ! -x "$mlflow_bin" ]]; then
    mlflow_bin="$(command -v mlflow || true)"
fi
if [[ -z "$mlflow_bin" ]]; then
    echo "mlflow/start.sh: no mlflow executable (run 'make setup' or set MLFLOW_BIN)" >&2
    exit 2
fi

store_dir="${MLFLOW_STORE_DIR:-$repo/.stack/mlflow}"
export MLFLOW_BACKEND_STORE_URI="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$store_dir/mlflow.db}"
export MLFLOW_ARTIFACTS_DESTINATION="${MLFLOW_ARTIFACTS_DESTINATION:-$store_dir/artifacts}"
# The server's background job runner (prompt optimisation, scorers) is not used here.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

if [[ "$MLFLOW_BACKEND_STORE_URI" == sqlite:///* ]]; then
    mkdir -p "$(dirname "${MLFLOW_BACKEND_STORE_URI#sqlite:///}")"
fi
if [[ "$MLFLOW_ARTIFACTS_DESTINATION" != *://* ]]; then
    mkdir -p "$MLFLOW_ARTIFACTS_DESTINATION"
fi

# Backend store and artifacts destination are read from the environment by the CLI
# (MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION); artifacts are proxied by the
# server (mlflow-artifacts:/), so clients need no S3 credentials.
exec "$mlflow_bin" server \
    --host "${MLFLOW_HOST:-127.0.0.1}" \
    --port "${MLFLOW_PORT:-5000}" \
    --workers "${MLFLOW_WORKERS:-1}" \
    --serve-artifacts \
    "$@"
