#!/usr/bin/env bash
# Start the team's MLflow tracking server: Postgres backend store, artefacts proxied to S3 (or any S3-compatible store).
#
# Configuration comes from the environment only (see server.env.template and README.md); nothing here holds a secret:
#   MLFLOW_BACKEND_STORE_URI      required  postgresql+psycopg2://USER@HOST:5432/DB  (no password: PGPASSWORD/~/.pgpass)
#   MLFLOW_ARTIFACTS_DESTINATION  required  s3://BUCKET/PREFIX
#   MLFLOW_HOST                   optional  interface to bind, default 127.0.0.1 (loopback only)
#   MLFLOW_PORT                   optional  default 5000
#   MLFLOW_WORKERS                optional  uvicorn worker processes, default 2
#   MLFLOW_ALLOWED_HOSTS          optional  Host headers to accept when bound beyond loopback (--allowed-hosts)
#   MLFLOW_CORS_ALLOWED_ORIGINS   optional  --cors-allowed-origins
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION  default false here: MLflow's GenAI job runner (trace rollups, prompt
#                                 optimisation) starts a runner and 7 huey consumers, each importing mlflow; nothing in
#                                 this project submits such jobs. Set it to true if you use those features.
# The server's S3 client (boto3) reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION (or an IAM role)
# and, for a non-AWS store, MLFLOW_S3_ENDPOINT_URL. Clients need none of these: artefacts go through the server.
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI, e.g. postgresql+psycopg2://mlflow@db.internal:5432/mlflow}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION, e.g. s3://my-bucket/mlflow}"

# A password inside the URI would be visible to every local user in `ps` and could reach logs: refuse it.
if [[ "$MLFLOW_BACKEND_STORE_URI" =~ ^[a-z0-9+]+://[^/@]*:[^/@]*@ ]]; then
    echo "serve.sh: MLFLOW_BACKEND_STORE_URI contains a password; put it in PGPASSWORD or ~/.pgpass instead" >&2
    exit 2
fi

export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

args=(
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI"
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
    --serve-artifacts
    --host "${MLFLOW_HOST:-127.0.0.1}"
    --port "${MLFLOW_PORT:-5000}"
    --workers "${MLFLOW_WORKERS:-2}"
)
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
    args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi
if [[ -n "${MLFLOW_CORS_ALLOWED_ORIGINS:-}" ]]; then
    args+=(--cors-allowed-origins "$MLFLOW_CORS_ALLOWED_ORIGINS")
fi
exec "${MLFLOW_BIN:-mlflow}" server "${args[@]}"
