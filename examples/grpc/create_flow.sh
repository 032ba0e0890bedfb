#!/usr/bin/env bash
# Create (and start) a flow through the API server with grpcurl and the local proto files.
#
#   examples/grpc/create_flow.sh
#
# Settings (environment): WALLABY_ADDR (default localhost:8080), SOURCE_DSN, DUCKDB_PATH, FLOW_NAME,
# START (true|false, default true), GRPCURL (the grpcurl binary, default: grpcurl on PATH),
# WALLABY_API_TOKEN (sent as a bearer token when set).
set -euo pipefail

ROOT_DIR=$(cd "$(dirname "$0")/../.." && pwd)
ADDR=${WALLABY_ADDR:-localhost:8080}
SOURCE_DSN=${SOURCE_DSN:-postgres://user:pass@localhost:5432/app?sslmode=disable}
DUCKDB_PATH=${DUCKDB_PATH:-./data/orders.duckdb}
FLOW_NAME=${FLOW_NAME:-pg_to_duckdb}
START=${START:-true}
GRPCURL=${GRPCURL:-grpcurl}

auth=()
if [[ -n "${WALLABY_API_TOKEN:-}" ]]; then
  auth=(-H "authorization: Bearer ${WALLABY_API_TOKEN}")
fi

"$GRPCURL" -plaintext "${auth[@]}" \
  -import-path "$ROOT_DIR/proto" \
  -proto wallaby/v1/flow.proto \
  -proto wallaby/v1/types.proto \
  -d @ \
  "$ADDR" wallaby.v1.FlowService/CreateFlow <<JSON
{
  "flow": {
    "name": "${FLOW_NAME}",
    "wire_format": "WIRE_FORMAT_ARROW",
    "config": {
      "ack_policy": "ACK_POLICY_ALL",
      "failure_mode": "FAILURE_MODE_HOLD_SLOT",
      "give_up_policy": "GIVE_UP_POLICY_ON_RETRY_EXHAUSTION"
    },
    "source": {
      "name": "pg-source",
      "type": "ENDPOINT_TYPE_POSTGRES",
      "options": {
        "dsn": "${SOURCE_DSN}",
        "slot": "${FLOW_NAME}_slot",
        "publication": "${FLOW_NAME}_pub",
        "publication_tables": "public.orders",
        "batch_size": "500",
        "batch_timeout": "1s",
        "status_interval": "10s",
        "create_slot": "true"
      }
    },
    "destinations": [
      {
        "name": "duckdb-out",
        "type": "ENDPOINT_TYPE_DUCKDB",
        "options": {
          "dsn": "${DUCKDB_PATH}",
          "write_mode": "target"
        }
      }
    ]
  },
  "start_immediately": ${START}
}
JSON
