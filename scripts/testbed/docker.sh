#!/usr/bin/env bash
# Start, stop or report a dedicated dockerd for the tests (Debian's docker.io, Engine API 1.41).
#
# Usage: docker.sh up|down|status
#
# The daemon keeps all its state under $XTM_TESTBED_DIR/docker and listens only on
# unix://$XTM_TESTBED_DIR/docker/docker.sock. It never touches /var/run/docker.sock or a system
# dockerd. Containers get no bridge network, so they must use the host or none network.
set -euo pipefail
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

DATA_ROOT="$TESTBED_DOCKER_DIR/data"
EXEC_ROOT="$TESTBED_DOCKER_DIR/exec"
PIDFILE="$TESTBED_DOCKER_DIR/dockerd.pid"
LOGFILE="$TESTBED_DOCKER_DIR/dockerd.log"
# dockerd reads /etc/docker/daemon.json by default. An empty file of our own keeps a system
# configuration from leaking into the testbed.
CONFIG_FILE="$TESTBED_DOCKER_DIR/daemon.json"
RUNTIME_NAME=runc-oom-wrapper
RUNTIME_PATH="$TESTBED_DOCKER_DIR/runc-oom-wrapper"

docker_running() {
    pidfile_alive "$PIDFILE" "$TESTBED_DOCKER_HOST"
}

check_socket_path_lengths() {
    # A unix socket path has at most 107 bytes on Linux. dockerd's own containerd puts its
    # sockets under the exec root, so a long XTM_TESTBED_DIR fails there with a vague error.
    local longest="$EXEC_ROOT/containerd/containerd.sock.ttrpc"
    if [ "${#longest}" -gt 107 ]; then
        die "XTM_TESTBED_DIR=$XTM_TESTBED_DIR is too long: the socket path $longest exceeds 107 bytes, choose a shorter directory"
    fi
}

start_docker() {
    ensure_packages "${TESTBED_PACKAGES[@]}"

    if docker_running; then
        log "dockerd already running (pid $(pidfile_pid "$PIDFILE")), socket $TESTBED_DOCKER_SOCKET"
    else
        check_socket_path_lengths
        mkdir -p "$TESTBED_DOCKER_DIR"
        if [ ! -s "$CONFIG_FILE" ]; then
            printf '{}\n' >"$CONFIG_FILE"
        fi
        # A copy outside the work tree keeps the running daemon independent of the checkout.
        as_root install -m 0755 "$TESTBED_SCRIPTS_DIR/runc-oom-wrapper" "$RUNTIME_PATH"

        local group_args=()
        if [ "$(id -u)" -ne 0 ]; then
            # Let the developer who started the testbed use the socket without sudo.
            group_args=(--group "$(id -gn)")
        fi

        log "starting dockerd, log in $LOGFILE"
        # If a system containerd is running, dockerd 20.10 connects to it instead of starting
        # its own. The containerd namespaces below then keep the testbed's containers apart
        # from the system dockerd's, which use "moby".
        as_root setsid --fork dockerd \
            --config-file "$CONFIG_FILE" \
            --data-root "$DATA_ROOT" \
            --exec-root "$EXEC_ROOT" \
            -H "$TESTBED_DOCKER_HOST" \
            --pidfile "$PIDFILE" \
            --bridge=none \
            --iptables=false \
            --ip6tables=false \
            --containerd-namespace xtm-testbed \
            --containerd-plugins-namespace xtm-testbed-plugins \
            --add-runtime "$RUNTIME_NAME=$RUNTIME_PATH" \
            --default-runtime "$RUNTIME_NAME" \
            "${group_args[@]}" \
            </dev/null >>"$LOGFILE" 2>&1 9>&-
    fi

    if ! wait_for 60 "dockerd to respond on $TESTBED_DOCKER_SOCKET" testbed_docker info; then
        tail -n 20 "$LOGFILE" >&2 || true
        die "dockerd did not start: see $LOGFILE"
    fi
    log "dockerd ready on $TESTBED_DOCKER_HOST"
}

stop_docker() {
    # dockerd stops its containers (up to their stop timeout) and its containerd before exiting.
    stop_pidfile "$PIDFILE" "$TESTBED_DOCKER_HOST" dockerd 90 as_root
    unmount_exec_root
}

# Unmount what dockerd leaves mounted under its exec root after it exits, such as the network
# namespace of swarm's ingress sandbox, so that the testbed directory can be deleted.
unmount_exec_root() {
    local mount_point
    # Field 5 of mountinfo is the mount point. Deeper mounts come last, so unmount in reverse.
    awk -v prefix="$EXEC_ROOT/" 'index($5, prefix) == 1 { print $5 }' /proc/self/mountinfo |
        sort -r |
        while read -r mount_point; do
            log "unmounting $mount_point"
            as_root umount "$mount_point"
        done
}

print_status() {
    if docker_running; then
        printf 'dockerd: running (pid %s) on %s\n' "$(pidfile_pid "$PIDFILE")" "$TESTBED_DOCKER_HOST"
    else
        printf 'dockerd: stopped\n'
        return 3
    fi
}

case "${1:-}" in
up)
    lock_testbed
    start_docker
    ;;
down)
    lock_testbed
    stop_docker
    ;;
status)
    print_status
    ;;
*)
    usage_up_down_status
    ;;
esac
