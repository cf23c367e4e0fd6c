#!/usr/bin/env bash
# Run the whole job on this machine: platform stand-in, agent, Docker Engine and
# an authenticated private registry, all on 127.0.0.1.
#
# Usage: scripts/demo.sh [--keep]
#
# A connector of the stand-in's catalog (image opencti/connector-test:1.0.0,
# which names no registry) is created and started. The agent resolves the image
# to 127.0.0.1:5000/opencti/connector-test:1.0.0, pulls it with the registry
# credentials, starts it, and reports status, health and logs to the stand-in.
# Without --keep, the agent, the stand-in and the connector are removed at the end.
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

keep=0
[[ "${1:-}" == "--keep" ]] && keep=1
demo_dir="${XTM_DEMO_DIR:-/tmp/xtm-demo}"
port="${XTM_DEMO_PORT:-4000}"
# One manager id per port, so that two demos on other ports never remove each
# other's containers: an agent removes its manager's containers that its
# platform does not know.
manager_id="xtm-demo-$port"
composer=(python3 -m xtm_composer)

step() { printf '\n==> %s\n' "$*" >&2; }

step "Starting the test engines (dockerd, registries)"
scripts/testbed/up.sh
# shellcheck disable=SC1091
. "${XTM_TESTBED_DIR:-/tmp/xtm-testbed}/testbed.env"

step "Preparing $demo_dir (manager key, sandbox token)"
mkdir -p "$demo_dir/config"
chmod 700 "$demo_dir"
[[ -f "$demo_dir/manager-key.pem" ]] ||
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 \
        -out "$demo_dir/manager-key.pem" 2>/dev/null
chmod 600 "$demo_dir/manager-key.pem"
[[ -f "$demo_dir/token" ]] || (umask 077 && openssl rand -hex 24 >"$demo_dir/token")
XTM_SANDBOX_TOKEN="$(cat "$demo_dir/token")"
export XTM_SANDBOX_TOKEN XTM_SANDBOX_URL="http://127.0.0.1:$port"

pids=()
cleanup() {
    if [[ $keep -eq 0 ]]; then
        for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
        for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
        docker -H "$DOCKER_HOST" ps -aq --filter "label=opencti-manager=$manager_id" |
            xargs -r docker -H "$DOCKER_HOST" rm -f >/dev/null
    fi
}
trap cleanup EXIT

step "Starting the platform stand-in on $XTM_SANDBOX_URL (log: $demo_dir/sandbox.log)"
"${composer[@]}" sandbox serve --listen "127.0.0.1:$port" \
    --log-format pretty >"$demo_dir/sandbox.log" 2>&1 &
pids+=($!)

step "Starting the agent (log: $demo_dir/agent.log)"
COMPOSER_CONFIG_DIR="$demo_dir/config" \
MANAGER__ID="$manager_id" \
MANAGER__EXECUTE_SCHEDULE=3 \
MANAGER__CREDENTIALS_KEY_FILEPATH="$demo_dir/manager-key.pem" \
MANAGER__LOGGER__FORMAT=pretty \
OPENCTI__URL="$XTM_SANDBOX_URL" \
OPENCTI__TOKEN="$XTM_SANDBOX_TOKEN" \
OPENCTI__LOGS_SCHEDULE=3 \
OPENCTI__HEALTH_SCHEDULE=3 \
OPENCTI__DAEMON__SELECTOR=docker \
OPENCTI__DAEMON__DOCKER__NETWORK_MODE=host \
OPENCTI__DAEMON__REGISTRY__SERVER="$XTM_TEST_REGISTRY" \
OPENCTI__DAEMON__REGISTRY__USERNAME="$XTM_TEST_REGISTRY_USERNAME" \
OPENCTI__DAEMON__REGISTRY__PASSWORD="$XTM_TEST_REGISTRY_PASSWORD" \
    "${composer[@]}" run >"$demo_dir/agent.log" 2>&1 &
pids+=($!)

step "Creating the connector once the agent has registered its key"
api_key_file="$demo_dir/test-api-key"
(umask 077 && openssl rand -hex 12 >"$api_key_file")
connector_id=""
for _ in $(seq 60); do
    kill -0 "${pids[1]}" 2>/dev/null || { echo "the agent exited; see $demo_dir/agent.log:" >&2; tail -5 "$demo_dir/agent.log" >&2; exit 1; }
    if output="$("${composer[@]}" sandbox connector add --catalog-id connector-test \
        --name "Demo connector $(date +%s)" --set-file "TEST_API_KEY=$api_key_file" 2>&1)"; then
        connector_id="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$output")"
        break
    fi
    sleep 1
done
[[ -n "$connector_id" ]] || { echo "could not create the connector: $output" >&2; exit 1; }
"${composer[@]}" sandbox connector start "$connector_id" >/dev/null
echo "connector $connector_id requested to start" >&2

step "Waiting for status, health and logs to reach the stand-in"
for _ in $(seq 60); do
    view="$("${composer[@]}" sandbox connector show "$connector_id")"
    if python3 -c 'import json,sys; c=json.load(sys.stdin); sys.exit(0 if c["current_status"]=="started" and c["health"] and c["logs"] else 1)' <<<"$view"; then
        python3 -c 'import json,sys; c=json.load(sys.stdin); c.pop("configuration", None); print(json.dumps(c, indent=2))' <<<"$view"
        step "Done: the connector runs as container $(docker -H "$DOCKER_HOST" ps --filter label=opencti-connector-id="$connector_id" --format '{{.Names}} ({{.Image}})')"
        [[ $keep -eq 1 ]] && echo "Agent and stand-in keep running (pids ${pids[*]})." >&2
        exit 0
    fi
    sleep 2
done
echo "the connector did not report started in time; see $demo_dir/agent.log" >&2
exit 1
