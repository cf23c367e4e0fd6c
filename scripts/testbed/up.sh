#!/usr/bin/env bash
# Start the whole testbed: dockerd, both registries, the test images and a one-node swarm.
#
# Usage: up.sh
#
# Safe to run again: each step skips what is already in place. Afterwards
# `. "$XTM_TESTBED_DIR/testbed.env"` (default /tmp/xtm-testbed/testbed.env) exports:
#
#   DOCKER_HOST, XTM_TEST_DOCKER_HOST  unix socket of the testbed dockerd
#   XTM_TEST_REGISTRY                  127.0.0.1:5000, requires a login
#   XTM_TEST_REGISTRY_USERNAME         user for that registry
#   XTM_TEST_REGISTRY_PASSWORD         password for that registry
#   XTM_TEST_OPEN_REGISTRY             127.0.0.1:5001, open to anyone
#   XTM_TESTBED_DIR                    directory holding the testbed state
set -euo pipefail
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

write_env_file() {
    local env_file="$XTM_TESTBED_DIR/testbed.env" password
    password="$(registry_password)"
    (
        umask 077
        {
            printf '# Written by scripts/testbed/up.sh. Contains the test registry password.\n'
            printf 'export DOCKER_HOST=%q\n' "$TESTBED_DOCKER_HOST"
            printf 'export XTM_TEST_DOCKER_HOST=%q\n' "$TESTBED_DOCKER_HOST"
            printf 'export XTM_TEST_REGISTRY=%q\n' "$TESTBED_AUTH_REGISTRY"
            printf 'export XTM_TEST_REGISTRY_USERNAME=%q\n' "$TESTBED_REGISTRY_USERNAME"
            printf 'export XTM_TEST_REGISTRY_PASSWORD=%q\n' "$password"
            printf 'export XTM_TEST_OPEN_REGISTRY=%q\n' "$TESTBED_OPEN_REGISTRY"
            printf 'export XTM_TESTBED_DIR=%q\n' "$XTM_TESTBED_DIR"
        } >"$env_file.new"
    )
    mv -f "$env_file.new" "$env_file"
    log "testbed ready: . $env_file"
}

lock_testbed
"$TESTBED_SCRIPTS_DIR/docker.sh" up
"$TESTBED_SCRIPTS_DIR/registry.sh" up
"$TESTBED_SCRIPTS_DIR/images.sh"
"$TESTBED_SCRIPTS_DIR/swarm.sh" up
write_env_file
