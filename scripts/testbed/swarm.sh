#!/usr/bin/env bash
# Turn the testbed dockerd into a one-node swarm manager, or leave the swarm.
#
# Usage: swarm.sh up|down|status
#
# Needs docker.sh up. Swarm would create docker_gwbridge in a private address range, so `up`
# creates it first in 198.19.0.0/24 and gives swarm the pool 198.19.128.0/17 for its overlay
# networks, both outside the private ranges 10/8, 172.16/12 and 192.168/16. Services must use
# the host or none network, because the testbed dockerd has no bridge and no iptables.
set -euo pipefail
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

GWBRIDGE_SUBNET=198.19.0.0/24
ADDRESS_POOL=198.19.128.0/17

# Print the local node's swarm state: inactive, pending, active, error or locked.
swarm_state() {
    testbed_docker info --format '{{.Swarm.LocalNodeState}}'
}

swarm_active() {
    [ "$(swarm_state)" = active ]
}

gwbridge_exists() {
    testbed_docker network inspect docker_gwbridge >/dev/null 2>&1
}

start_swarm() {
    require_testbed_docker
    # After a dockerd restart the node rejoins its swarm in the background.
    if [ "$(swarm_state)" = pending ]; then
        wait_for 30 "the swarm node to rejoin" swarm_active || true
    fi
    if swarm_active; then
        log "swarm already active"
        return 0
    fi
    if ! gwbridge_exists; then
        log "creating network docker_gwbridge ($GWBRIDGE_SUBNET)"
        testbed_docker network create \
            --subnet "$GWBRIDGE_SUBNET" \
            --opt com.docker.network.bridge.name=docker_gwbridge \
            --opt com.docker.network.bridge.enable_icc=false \
            docker_gwbridge >/dev/null
    fi
    log "initializing swarm on 127.0.0.1 with address pool $ADDRESS_POOL"
    # --listen-addr keeps the swarm management port off the other interfaces.
    testbed_docker swarm init \
        --advertise-addr 127.0.0.1 \
        --listen-addr 127.0.0.1:2377 \
        --default-addr-pool "$ADDRESS_POOL" >/dev/null
    if ! wait_for 30 "swarm to become active" swarm_active; then
        die "swarm state is '$(swarm_state)' instead of active: see $TESTBED_DOCKER_DIR/dockerd.log"
    fi
    log "swarm active"
}

stop_swarm() {
    require_testbed_docker
    if [ "$(swarm_state)" != inactive ]; then
        log "leaving swarm"
        testbed_docker swarm leave --force >/dev/null
    fi
    if gwbridge_exists; then
        log "removing network docker_gwbridge"
        # Leaving the swarm detaches its containers from the bridge shortly afterwards.
        if ! wait_for 30 "docker_gwbridge removal" testbed_docker network rm docker_gwbridge; then
            die "failed to remove docker_gwbridge: list its containers with 'docker network inspect docker_gwbridge'"
        fi
    fi
    delete_gwbridge_link
}

# Delete the docker_gwbridge interface when it still carries the testbed subnet. dockerd deletes
# a bridge on `network rm` only if it created the interface itself, and it reuses one left from
# an earlier run. An interface in another subnet belongs to some other dockerd and stays.
delete_gwbridge_link() {
    command -v ip >/dev/null 2>&1 || return 0
    if ip -o -4 address show dev docker_gwbridge 2>/dev/null | grep -qF " ${GWBRIDGE_SUBNET%.0/24}.1/24 "; then
        log "deleting the docker_gwbridge interface"
        as_root ip link delete docker_gwbridge
    fi
}

case "${1:-}" in
up)
    lock_testbed
    start_swarm
    ;;
down)
    lock_testbed
    stop_swarm
    ;;
status)
    require_testbed_docker
    printf 'swarm: %s\n' "$(swarm_state)"
    ;;
*)
    usage_up_down_status
    ;;
esac
