# shellcheck shell=bash disable=SC2034 # The scripts that source this file use its variables.
# Shared helpers for the testbed scripts. Source it, do not run it.
#
# Every script keeps its state under XTM_TESTBED_DIR (default /tmp/xtm-testbed) and logs to
# stderr, so stdout carries only what a command is asked to print (for example `status`).

XTM_TESTBED_DIR="${XTM_TESTBED_DIR:-/tmp/xtm-testbed}"
export XTM_TESTBED_DIR

TESTBED_SCRIPTS_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"

# Debian's client (docker.io, Engine API 1.41) matches the testbed dockerd. A newer client found
# first on PATH would also work through version negotiation, but its messages may differ.
DOCKER_CLI=/usr/bin/docker

TESTBED_DOCKER_DIR="$XTM_TESTBED_DIR/docker"
TESTBED_DOCKER_SOCKET="$TESTBED_DOCKER_DIR/docker.sock"
TESTBED_DOCKER_HOST="unix://$TESTBED_DOCKER_SOCKET"
# Client configuration holding the registry login, kept apart from the user's ~/.docker.
TESTBED_DOCKER_CONFIG="$XTM_TESTBED_DIR/docker-config"

TESTBED_REGISTRY_DIR="$XTM_TESTBED_DIR/registry"
TESTBED_REGISTRY_USERNAME=xtm-test
TESTBED_REGISTRY_PASSWORD_FILE="$TESTBED_REGISTRY_DIR/password"
TESTBED_AUTH_REGISTRY=127.0.0.1:5000
TESTBED_OPEN_REGISTRY=127.0.0.1:5001

# Debian packages that the whole testbed needs. docker.sh installs them in one apt-get run, and
# each script also checks those it uses itself.
TESTBED_PACKAGES=(docker.io busybox-static docker-registry apache2-utils curl python3)

log() {
    printf '%s testbed: %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# Run a command as root: directly when already root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -- "$@"
    else
        die "'$1' needs root: run this script as root or install sudo"
    fi
}

# Install the named Debian packages that are not installed yet, after `apt-get update` because a
# fresh machine may have no package lists. Nothing runs when all packages are present.
ensure_packages() {
    local missing=() package status
    for package in "$@"; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)"
        if [ "$status" != installed ]; then
            missing+=("$package")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# wait_for TIMEOUT_SECONDS DESCRIPTION COMMAND...
# Run COMMAND (output discarded) every 0.2 s until it succeeds, and fail after TIMEOUT_SECONDS.
wait_for() {
    local timeout="$1" description="$2"
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "timed out after ${timeout}s waiting for $description"
            return 1
        fi
        sleep 0.2
    done
}

# Succeed when PIDFILE names a live process whose command line contains PATTERN. The pattern
# check guards against a stale pidfile whose number now belongs to an unrelated process.
pidfile_alive() {
    local pidfile="$1" pattern="$2" pid
    [ -r "$pidfile" ] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [ -n "$pid" ] || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern"
}

# Succeed while process PID exists and has not exited. An exited daemon can stay a zombie for a
# while, because its parent is init.
process_running() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    # The state letter follows the command name, which is in parentheses and may contain spaces.
    stat="${stat##*) }"
    [ "${stat%% *}" != Z ]
}

# Print the pid stored in PIDFILE.
pidfile_pid() {
    tr -dc '0-9' <"$1"
}

# stop_pidfile PIDFILE PATTERN NAME TIMEOUT_SECONDS [as_root]
# Send SIGTERM to the process in PIDFILE if it is alive, then wait until it has exited.
stop_pidfile() {
    local pidfile="$1" pattern="$2" name="$3" timeout="$4" runner="${5:-}"
    local pid
    if ! pidfile_alive "$pidfile" "$pattern"; then
        log "$name is not running"
        return 0
    fi
    pid="$(pidfile_pid "$pidfile")"
    log "stopping $name (pid $pid)"
    $runner kill -TERM "$pid"
    if ! wait_for "$timeout" "$name (pid $pid) to exit" not process_running "$pid"; then
        die "$name (pid $pid) is still running after SIGTERM: inspect it, then kill it by pid"
    fi
}

# spawn_daemon PIDFILE LOGFILE COMMAND...
# Start COMMAND in a session of its own, detached from this script, append its output to
# LOGFILE and store its pid in PIDFILE. The pidfile is written just before COMMAND starts.
spawn_daemon() {
    local pidfile="$1" logfile="$2"
    shift 2
    # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell.
    setsid --fork sh -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" \
        </dev/null >>"$logfile" 2>&1 9>&-
}

# Run COMMAND and invert its exit status, for use with wait_for.
not() {
    ! "$@"
}

# Succeed when something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Hold an exclusive lock on the testbed directory until the script exits, so that two runs of
# `up` or `down` do not race. Scripts started by a locked script inherit the lock through fd 9
# and XTM_TESTBED_LOCKED. Daemons must be started with `9>&-`, or they would keep the lock.
lock_testbed() {
    if [ "${XTM_TESTBED_LOCKED:-}" = "$XTM_TESTBED_DIR" ]; then
        return 0
    fi
    mkdir -p "$XTM_TESTBED_DIR"
    exec 9>"$XTM_TESTBED_DIR/.lock"
    if ! flock -w 600 9; then
        die "timed out after 600s waiting for the lock $XTM_TESTBED_DIR/.lock held by another testbed run"
    fi
    export XTM_TESTBED_LOCKED="$XTM_TESTBED_DIR"
}

# Run the Debian docker client against the testbed dockerd with the testbed client
# configuration.
testbed_docker() {
    DOCKER_HOST="$TESTBED_DOCKER_HOST" DOCKER_CONFIG="$TESTBED_DOCKER_CONFIG" "$DOCKER_CLI" "$@"
}

require_testbed_docker() {
    testbed_docker info >/dev/null 2>&1 ||
        die "the testbed dockerd is not reachable on $TESTBED_DOCKER_HOST: run scripts/testbed/docker.sh up first"
}

# Print the registry password, failing when registry.sh has not created it yet.
registry_password() {
    [ -r "$TESTBED_REGISTRY_PASSWORD_FILE" ] ||
        die "missing $TESTBED_REGISTRY_PASSWORD_FILE: run scripts/testbed/registry.sh up first"
    cat "$TESTBED_REGISTRY_PASSWORD_FILE"
}

usage_up_down_status() {
    printf 'usage: %s up|down|status\n' "$(basename -- "$0")" >&2
    exit 2
}
