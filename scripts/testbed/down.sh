#!/usr/bin/env bash
# Stop the daemons that up.sh started (dockerd and both registries), keeping their data.
#
# Usage: down.sh
#
# The swarm stays initialized in the dockerd data and is active again after the next up.sh.
# Run `swarm.sh down` before this script to leave it, and delete $XTM_TESTBED_DIR (as root)
# to discard all state.
set -euo pipefail
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

lock_testbed
"$TESTBED_SCRIPTS_DIR/docker.sh" down
"$TESTBED_SCRIPTS_DIR/registry.sh" down
log "testbed stopped, data kept in $XTM_TESTBED_DIR"
