#!/usr/bin/env bash
# Start, stop or report two image registries for the tests (Debian's docker-registry 2.8).
#
# Usage: registry.sh up|down|status
#
#   127.0.0.1:5000  requires HTTP basic authentication: user xtm-test, with a random password
#                   created once per testbed directory in $XTM_TESTBED_DIR/registry/password.
#   127.0.0.1:5001  open to anyone, so that tests have a second, unrelated registry.
#
# dockerd accepts plain HTTP for registries on 127.0.0.0/8, so neither registry needs TLS.
set -euo pipefail
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

HTPASSWD_FILE="$TESTBED_REGISTRY_DIR/auth/htpasswd"

# Registry instances as "name address" pairs. Each keeps its files in $TESTBED_REGISTRY_DIR/NAME.
REGISTRIES=("auth $TESTBED_AUTH_REGISTRY" "open $TESTBED_OPEN_REGISTRY")

# Create the password once. Later runs keep it, so logins stored by tests stay valid.
ensure_password() {
    if [ -s "$TESTBED_REGISTRY_PASSWORD_FILE" ]; then
        return 0
    fi
    log "creating the registry password in $TESTBED_REGISTRY_PASSWORD_FILE"
    # 32 characters from [A-Za-z0-9], about 190 bits. 512 random bytes hold about 124 such
    # characters. Reading a fixed amount avoids the SIGPIPE that `tr </dev/urandom | head`
    # raises under pipefail.
    local password
    password="$(head -c 512 /dev/urandom | tr -dc 'A-Za-z0-9')"
    if [ "${#password}" -lt 32 ]; then
        die "failed to generate a registry password: /dev/urandom returned too few bytes"
    fi
    (
        umask 077
        printf '%s' "${password:0:32}" >"$TESTBED_REGISTRY_PASSWORD_FILE.new"
    )
    mv -f "$TESTBED_REGISTRY_PASSWORD_FILE.new" "$TESTBED_REGISTRY_PASSWORD_FILE"
}

# Write the bcrypt htpasswd file unless it already accepts the current password. The password
# goes through stdin (-i) so that it never shows in a process list.
ensure_htpasswd() {
    if [ -s "$HTPASSWD_FILE" ] &&
        registry_password | htpasswd -v -i "$HTPASSWD_FILE" "$TESTBED_REGISTRY_USERNAME" >/dev/null 2>&1; then
        return 0
    fi
    log "writing $HTPASSWD_FILE for user $TESTBED_REGISTRY_USERNAME"
    (
        umask 077
        registry_password | htpasswd -B -i -n "$TESTBED_REGISTRY_USERNAME" >"$HTPASSWD_FILE.new"
    )
    mv -f "$HTPASSWD_FILE.new" "$HTPASSWD_FILE"
}

# write_config NAME ADDRESS
write_config() {
    local name="$1" address="$2"
    local directory="$TESTBED_REGISTRY_DIR/$name"
    {
        printf 'version: 0.1\n'
        printf 'log:\n  level: info\n'
        printf 'storage:\n'
        printf '  filesystem:\n    rootdirectory: %s\n' "$directory/storage"
        printf '  delete:\n    enabled: true\n'
        printf 'http:\n  addr: %s\n' "$address"
        if [ "$name" = auth ]; then
            printf 'auth:\n  htpasswd:\n'
            printf '    realm: xtm-testbed\n'
            printf '    path: %s\n' "$HTPASSWD_FILE"
        fi
    } >"$directory/config.yml.new"
    mv -f "$directory/config.yml.new" "$directory/config.yml"
}

# Print the HTTP status of GET /v2/ on ADDRESS: 401 from the authenticated registry and 200
# from the open one mean that the registry is serving.
registry_http_status() {
    curl --silent --output /dev/null --max-time 2 --write-out '%{http_code}' "http://$1/v2/" || true
}

registry_serving() {
    local status
    status="$(registry_http_status "$1")"
    [ "$status" = 200 ] || [ "$status" = 401 ]
}

# start_registry NAME ADDRESS
start_registry() {
    local name="$1" address="$2"
    local directory="$TESTBED_REGISTRY_DIR/$name"
    local pidfile="$directory/registry.pid"
    local logfile="$directory/registry.log"
    local port="${address##*:}"

    if pidfile_alive "$pidfile" "$directory/config.yml"; then
        log "registry $name already running (pid $(pidfile_pid "$pidfile")) on $address"
        return 0
    fi
    if port_in_use "$port"; then
        # On a host with systemd, Debian's docker-registry.service listens on port 5000 once the
        # package is installed.
        die "port $port on 127.0.0.1 is in use by another process, so registry $name cannot start on $address: stop that process and retry"
    fi

    mkdir -p "$directory/storage"
    write_config "$name" "$address"
    log "starting registry $name on $address, log in $logfile"
    spawn_daemon "$pidfile" "$logfile" docker-registry serve "$directory/config.yml"
    if ! wait_for 30 "registry $name on $address" registry_serving "$address"; then
        tail -n 20 "$logfile" >&2 || true
        die "registry $name did not start: see $logfile"
    fi
}

# stop_registry NAME
stop_registry() {
    local directory="$TESTBED_REGISTRY_DIR/$1"
    stop_pidfile "$directory/registry.pid" "$directory/config.yml" "registry $1" 30
}

start_registries() {
    ensure_packages docker-registry apache2-utils curl
    mkdir -p "$TESTBED_REGISTRY_DIR/auth" "$TESTBED_REGISTRY_DIR/open"
    chmod 0700 "$TESTBED_REGISTRY_DIR"
    ensure_password
    ensure_htpasswd
    local entry
    for entry in "${REGISTRIES[@]}"; do
        # shellcheck disable=SC2086 # split "name address" into two arguments.
        start_registry $entry
    done
}

stop_registries() {
    local entry
    for entry in "${REGISTRIES[@]}"; do
        stop_registry "${entry%% *}"
    done
}

print_status() {
    local entry name address directory status=0
    for entry in "${REGISTRIES[@]}"; do
        name="${entry%% *}"
        address="${entry#* }"
        directory="$TESTBED_REGISTRY_DIR/$name"
        if pidfile_alive "$directory/registry.pid" "$directory/config.yml"; then
            printf 'registry %s: running (pid %s) on %s\n' "$name" "$(pidfile_pid "$directory/registry.pid")" "$address"
        else
            printf 'registry %s: stopped\n' "$name"
            status=3
        fi
    done
    return "$status"
}

case "${1:-}" in
up)
    lock_testbed
    start_registries
    ;;
down)
    lock_testbed
    stop_registries
    ;;
status)
    print_status
    ;;
*)
    usage_up_down_status
    ;;
esac
