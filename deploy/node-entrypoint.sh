#!/usr/bin/env bash
# Entrypoint of the provider node image: starts Triton on the provider's
# model repository, on loopback only, waits until it is ready, then starts the
# idlegrid agent against it. The agent dials out to the marketplace's relay
# and serves the node's requests over that one link: nothing listens on the
# container's network interfaces, so the node joins from behind NAT and its
# Triton is never exposed. SIGTERM drains the agent first (the registry stops routing to
# the node), then stops Triton. If either process exits, the other is stopped
# and the container exits with the first one's status.
#
# Settings (environment):
#   IDLEGRID_MODEL_REPOSITORY   Triton model repository (default /models)
#   IDLEGRID_NODE_CONFIG        the node's config file (default /etc/idlegrid/node.toml)
#   IDLEGRID_TRITON_READY_S     seconds to wait for Triton to load its models (default 900)
#   IDLEGRID_RELAY_ADDR         the marketplace's relay, HOST:PORT (required)
#   IDLEGRID_REGISTRY_ADDR, IDLEGRID_TLS_CA, ...  read by the agent (common/config.py)
# Extra arguments are passed to tritonserver, e.g. --model-control-mode=explicit.
set -euo pipefail

repository="${IDLEGRID_MODEL_REPOSITORY:-/models}"
node_config="${IDLEGRID_NODE_CONFIG:-/etc/idlegrid/node.toml}"
ready_s="${IDLEGRID_TRITON_READY_S:-900}"
relay="${IDLEGRID_RELAY_ADDR:?set IDLEGRID_RELAY_ADDR to the marketplace relay, HOST:PORT}"

# Every Triton port on loopback: the agent forwards the relay's requests to
# gRPC (8001) and reads metrics (8002); only this script uses HTTP (8000).
tritonserver --model-repository="$repository" \
  --grpc-port=8001 --grpc-address=127.0.0.1 --http-port=8000 --http-address=127.0.0.1 \
  --metrics-port=8002 --metrics-address=127.0.0.1 \
  "$@" &
triton_pid=$!
agent_pid=

stop() {
  trap - TERM INT
  if [[ -n "$agent_pid" ]]; then kill -TERM "$agent_pid" 2>/dev/null || true; wait "$agent_pid" || true; fi
  kill -TERM "$triton_pid" 2>/dev/null || true
  wait "$triton_pid" || true
}
trap 'stop; exit 143' TERM INT

deadline=$((SECONDS + ready_s))
until curl -fsS -o /dev/null http://127.0.0.1:8000/v2/health/ready; do
  if ! kill -0 "$triton_pid" 2>/dev/null; then
    wait "$triton_pid" && status=0 || status=$?
    echo "idlegrid-node: tritonserver exited ($status) before it was ready" >&2
    exit $(( status == 0 ? 1 : status ))
  fi
  if (( SECONDS >= deadline )); then
    echo "idlegrid-node: tritonserver not ready after ${ready_s}s" >&2
    stop
    exit 1
  fi
  sleep 2
done

idlegrid node start --triton-url 127.0.0.1:8001 --relay "$relay" --config "$node_config" \
  --metrics-url http://127.0.0.1:8002/metrics &
agent_pid=$!

# Whichever exits first decides the container's fate.
wait -n "$triton_pid" "$agent_pid" && status=0 || status=$?
echo "idlegrid-node: a process exited ($status); stopping the other" >&2
stop
exit "$status"
