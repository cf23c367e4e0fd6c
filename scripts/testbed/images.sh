#!/usr/bin/env bash
# Build the test images from busybox-static and push them to the testbed registries.
#
# Usage: images.sh
#
# Needs docker.sh up and registry.sh up. Each image is one layer made by `docker import` from a
# tree holding bin/busybox, a symlink per busybox applet and the scripts written below.
#
#   127.0.0.1:5000/opencti/connector-test:1.0.0       long-running connector stand-in
#   127.0.0.1:5000/opencti/connector-ipinfo:7.260817.0 the same, under a real catalog name
#   127.0.0.1:5000/opencti/connector-crash:1.0.0      writes to stdout and stderr, exits 1
#   127.0.0.1:5001/public/connector-test:1.0.0        the stand-in, in the open registry
#   xtm-testbed/pause:latest                          local only, sleeps until SIGTERM
#
# Once pushed, the registry images are removed from the testbed dockerd, so that tests pull
# them. A later run skips the build while the registries still serve every image and neither
# this script nor the busybox-static package has changed.
set -euo pipefail
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

IMAGES_DIR="$XTM_TESTBED_DIR/images"
ROOTFS_DIR="$IMAGES_DIR/rootfs"
ROOTFS_TAR="$IMAGES_DIR/rootfs.tar"
STAMP_FILE="$IMAGES_DIR/stamp"
PAUSE_IMAGE=xtm-testbed/pause:latest

# "reference command" pairs for the images pushed to a registry.
PUSHED_IMAGES=(
    "$TESTBED_AUTH_REGISTRY/opencti/connector-test:1.0.0 /bin/connector-standin"
    "$TESTBED_AUTH_REGISTRY/opencti/connector-ipinfo:7.260817.0 /bin/connector-standin"
    "$TESTBED_AUTH_REGISTRY/opencti/connector-crash:1.0.0 /bin/connector-crash"
    "$TESTBED_OPEN_REGISTRY/public/connector-test:1.0.0 /bin/connector-standin"
)

# Print a digest of everything the images are made from.
current_stamp() {
    {
        cat -- "${BASH_SOURCE[0]}"
        dpkg-query -W -f='${Version}' busybox-static
    } | sha256sum | cut -d' ' -f1
}

write_scripts() {
    local bin="$ROOTFS_DIR/bin"

    cat >"$bin/connector-standin" <<'EOF'
#!/bin/sh
# Connector stand-in: one start line, then a tick every 2 s until SIGTERM or SIGINT.
stop() {
    echo "connector stopping on $1, CONNECTOR_NAME=${CONNECTOR_NAME:-}"
    exit 0
}
trap 'stop SIGTERM' TERM
trap 'stop SIGINT' INT
echo "connector started, CONNECTOR_NAME=${CONNECTOR_NAME:-}"
while true; do
    echo "tick $(date)"
    # The shell runs a trap only between commands. Waiting on a background sleep lets a
    # signal end the wait at once instead of after the sleep.
    sleep 2 &
    wait $!
done
EOF

    cat >"$bin/connector-crash" <<'EOF'
#!/bin/sh
# Crashing connector: one line on stdout, one on stderr, then exit status 1 after about 1 s.
echo "connector starting, CONNECTOR_NAME=${CONNECTOR_NAME:-}"
echo "connector failed: simulated crash" >&2
sleep 1
exit 1
EOF

    cat >"$bin/pause" <<'EOF'
#!/bin/sh
# Pod infrastructure container: sleeps until SIGTERM or SIGINT.
trap 'exit 0' TERM INT
while true; do
    sleep 3600 &
    wait $!
done
EOF

    chmod 0755 "$bin/connector-standin" "$bin/connector-crash" "$bin/pause"
}

build_rootfs_tar() {
    local applet
    rm -rf "$ROOTFS_DIR"
    mkdir -p "$ROOTFS_DIR/bin" "$ROOTFS_DIR/etc" "$ROOTFS_DIR/root"
    install -d -m 1777 "$ROOTFS_DIR/tmp"
    install -m 0755 /bin/busybox "$ROOTFS_DIR/bin/busybox"
    for applet in $(/bin/busybox --list); do
        if [ "$applet" != busybox ]; then
            ln -s busybox "$ROOTFS_DIR/bin/$applet"
        fi
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
        >"$ROOTFS_DIR/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOTFS_DIR/etc/group"
    write_scripts
    # Fixed order, times and owners give the same layer digest on every build.
    tar --create --file "$ROOTFS_TAR" --directory "$ROOTFS_DIR" \
        --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner .
}

# import_image REFERENCE COMMAND STAMP
import_image() {
    local reference="$1" command="$2" stamp="$3"
    testbed_docker import \
        --change "CMD [\"$command\"]" \
        --change 'ENV PATH=/bin' \
        --change "LABEL org.xtm-testbed.stamp=$stamp" \
        - "$reference" <"$ROOTFS_TAR" >/dev/null
}

# Pass the registry login to curl through a config on stdin, never on its command line.
curl_auth_config() {
    printf 'user = "%s:%s"\n' "$TESTBED_REGISTRY_USERNAME" "$(registry_password)"
}

# Succeed when the registry serves a manifest for REFERENCE (registry/repository:tag).
manifest_exists() {
    local reference="$1"
    local registry="${reference%%/*}"
    local name="${reference#*/}"
    local url="http://$registry/v2/${name%:*}/manifests/${name##*:}"
    local accept='Accept: application/vnd.docker.distribution.manifest.v2+json'
    if [ "$registry" = "$TESTBED_AUTH_REGISTRY" ]; then
        curl_auth_config | curl --config - --silent --fail --head --max-time 5 \
            --header "$accept" --output /dev/null "$url"
    else
        curl --silent --fail --head --max-time 5 --header "$accept" --output /dev/null "$url"
    fi
}

pushed_images_current() {
    local entry
    [ -r "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$1" ] || return 1
    for entry in "${PUSHED_IMAGES[@]}"; do
        manifest_exists "${entry%% *}" || return 1
    done
}

login_registry() {
    mkdir -p "$TESTBED_DOCKER_CONFIG"
    chmod 0700 "$TESTBED_DOCKER_CONFIG"
    local output
    # The client warns on every login that config.json stores the password unencrypted, which is
    # expected here, so its output is shown only when the login fails.
    if ! output="$(registry_password | testbed_docker login --username "$TESTBED_REGISTRY_USERNAME" \
        --password-stdin "$TESTBED_AUTH_REGISTRY" 2>&1)"; then
        printf '%s\n' "$output" >&2
        die "docker login to $TESTBED_AUTH_REGISTRY as $TESTBED_REGISTRY_USERNAME failed: see $TESTBED_REGISTRY_DIR/auth/registry.log"
    fi
}

push_images() {
    local stamp="$1" entry reference
    login_registry
    for entry in "${PUSHED_IMAGES[@]}"; do
        reference="${entry%% *}"
        log "pushing $reference"
        import_image "$reference" "${entry#* }" "$stamp"
        testbed_docker push --quiet "$reference" >/dev/null
    done
    printf '%s\n' "$stamp" >"$STAMP_FILE"
}

# Remove the registry images from the dockerd image store, so that tests must pull them.
remove_local_copies() {
    local entry reference
    for entry in "${PUSHED_IMAGES[@]}"; do
        reference="${entry%% *}"
        if ! testbed_docker image inspect "$reference" >/dev/null 2>&1; then
            continue
        fi
        if ! testbed_docker rmi "$reference" >/dev/null; then
            log "warning: failed to remove $reference from the testbed dockerd, so tests may not pull it: remove the containers that use it"
        fi
    done
}

ensure_pause_image() {
    local stamp="$1" label
    label="$(testbed_docker image inspect --format '{{ index .Config.Labels "org.xtm-testbed.stamp" }}' \
        "$PAUSE_IMAGE" 2>/dev/null || true)"
    if [ "$label" = "$stamp" ]; then
        return 0
    fi
    log "building $PAUSE_IMAGE"
    if [ ! -s "$ROOTFS_TAR" ]; then
        build_rootfs_tar
    fi
    import_image "$PAUSE_IMAGE" /bin/pause "$stamp"
}

main() {
    lock_testbed
    ensure_packages busybox-static curl
    require_testbed_docker
    registry_password >/dev/null

    local stamp
    stamp="$(current_stamp)"
    mkdir -p "$IMAGES_DIR"
    if pushed_images_current "$stamp"; then
        log "registry images are up to date"
    else
        build_rootfs_tar
        push_images "$stamp"
    fi
    ensure_pause_image "$stamp"
    remove_local_copies
    log "images ready"
}

main "$@"
