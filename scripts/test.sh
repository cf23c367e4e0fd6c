#!/usr/bin/env bash
# Run the whole test suite against real engines.
#
# Starts (or reuses) the testbed: dockerd, the two registries, the test images,
# a one-node swarm and a one-node Kubernetes cluster, all on loopback. Then runs
# pytest with any arguments given, e.g. `scripts/test.sh tests/unit -q`.
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

scripts/testbed/up.sh
# The proxy tests run Debian's tinyproxy as a real HTTP proxy on loopback.
if ! command -v tinyproxy >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q tinyproxy
fi
if [[ "${XTM_SKIP_KUBERNETES:-0}" != 1 ]]; then
    scripts/testbed/kubernetes.sh up
fi

status=0
python -m pytest "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "pytest collected no tests: treating the run as failed" >&2
    exit 1
fi
exit "$status"
