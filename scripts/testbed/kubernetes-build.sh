#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler and kubelet
# v1.20.2 from Debian's `kubernetes` source package and cache the binaries.
#
# Usage: scripts/testbed/kubernetes-build.sh
#
# Environment:
#   XTM_KUBE_CACHE      directory of the cached binaries
#                       (default /var/cache/xtm-composer/kubernetes-v1.20.2/bin)
#   XTM_KUBE_BUILD_DIR  work directory for the source, GOPATH and Go build cache
#                       (default: the parent of XTM_KUBE_CACHE, plus /build)
#
# When XTM_KUBE_CACHE contains all four binaries, built by the current steps, the
# script returns at once. A cold build with Go 1.19 took 345 s on an idle 2-core
# VM and 565 s on the same VM under other load. It must run as root, because it
# installs Debian packages and adds a deb-src entry to apt.
set -euo pipefail
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

KUBE_VERSION="1.20.2"
KUBE_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
BUILD_PACKAGES=(etcd-server golang-go golang-github-modern-go-reflect2-dev dpkg-dev)
REFLECT2_DEBIAN_DIR="/usr/share/gocode/src/github.com/modern-go/reflect2"
DEB_SRC_LIST="/etc/apt/sources.list.d/xtm-composer-deb-src.sources"
# Written next to the binaries. Change it whenever the build steps change, so that caches made by
# older steps are rebuilt.
BUILD_RECIPE="kubernetes-$KUBE_VERSION debian-reflect2 openapi-gen no-aws-gcp-credential-providers"

XTM_KUBE_CACHE="${XTM_KUBE_CACHE:-/var/cache/xtm-composer/kubernetes-v${KUBE_VERSION}/bin}"
XTM_KUBE_BUILD_DIR="${XTM_KUBE_BUILD_DIR:-$(dirname "$XTM_KUBE_CACHE")/build}"

START_SECONDS=$(date +%s.%N)
set -E
trap 'log "error: command failed with status $? at line $LINENO: $BASH_COMMAND"' ERR

# Print the seconds elapsed since START_SECONDS, with one decimal.
elapsed() {
    awk -v start="$START_SECONDS" -v now="$(date +%s.%N)" 'BEGIN { printf "%.1f", now - start }'
}

cache_is_complete() {
    local binary
    for binary in "${KUBE_BINARIES[@]}"; do
        [[ -x "$XTM_KUBE_CACHE/$binary" ]] || return 1
    done
    [[ "$(cat "$XTM_KUBE_CACHE/recipe" 2>/dev/null)" == "$BUILD_RECIPE" ]]
}

# Add a deb-src twin of Debian's deb822 source list, so that `apt-get source`
# finds the kubernetes package. Existing deb-src entries are left alone.
ensure_deb_src_entry() {
    if grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return
    fi
    local debian_list="/etc/apt/sources.list.d/debian.sources"
    [[ -f "$debian_list" ]] || die "$debian_list not found, so no deb-src entry can be derived: add a deb-src entry for Debian by hand"
    log "adding deb-src entry $DEB_SRC_LIST"
    sed 's/^Types: deb$/Types: deb-src/' "$debian_list" >"$DEB_SRC_LIST"
    apt-get update -qq >&2
}

# Download and unpack Debian's source package (with Debian's patches applied)
# into a fresh tree, and print the tree's path.
unpack_source() {
    local download_dir="$XTM_KUBE_BUILD_DIR/source-package"
    local tree="$XTM_KUBE_BUILD_DIR/kubernetes-$KUBE_VERSION"
    mkdir -p "$download_dir"
    if ! compgen -G "$download_dir/kubernetes_*.dsc" >/dev/null; then
        log "downloading Debian's kubernetes source package"
        (cd "$download_dir" && apt-get source --download-only -qq kubernetes) >&2
    fi
    local dsc
    dsc=$(compgen -G "$download_dir/kubernetes_*.dsc" | head -n 1)
    case "$dsc" in
        *"really${KUBE_VERSION}"* | *"_${KUBE_VERSION}"*) ;;
        *) die "source package $dsc is not Kubernetes $KUBE_VERSION: check apt's deb-src entries, then remove $download_dir" ;;
    esac
    rm -rf "$tree"
    log "unpacking $(basename "$dsc")"
    dpkg-source -x "$dsc" "$tree" >&2
    printf '%s\n' "$tree"
}

# Replace the vendored reflect2 v1.0.1, whose map iteration crashes with
# SIGSEGV under Go >= 1.18, by the copy from golang-github-modern-go-reflect2-dev.
replace_reflect2() {
    local tree="$1"
    local vendored="$tree/vendor/github.com/modern-go/reflect2"
    [[ -d "$REFLECT2_DEBIAN_DIR" ]] || die "$REFLECT2_DEBIAN_DIR not found: install golang-github-modern-go-reflect2-dev"
    rm -rf "$vendored"
    cp -rL "$REFLECT2_DEBIAN_DIR" "$vendored"
    rm -f "$vendored/go.mod" "$vendored/go.sum"
}

# Drop the AWS ECR and Google Container Registry credential providers from the kubelet. At start
# the kubelet calls Enabled() on each provider. The ECR one then queries the EC2 instance metadata
# address 169.254.169.254, and the Google one queries metadata.google.internal when the DMI
# product name is Google's. The testbed sends no traffic to cloud metadata services. The Azure
# provider stays, because the kubelet registers its flag, and it only reads a file given by flag.
remove_cloud_credential_providers() {
    local tree="$1" file
    for file in cmd/kubelet/app/plugins.go cmd/kubelet/app/options/globalflags.go; do
        sed -i -E '\#^\s*_ "k8s.io/kubernetes/pkg/credentialprovider/(aws|gcp)"$#d' "$tree/$file"
    done
    if grep -rq --include='*.go' --exclude='*_test.go' \
        -E '^\s*(\w+ )?"k8s.io/kubernetes/pkg/credentialprovider/(aws|gcp)"$' "$tree/cmd" "$tree/pkg"; then
        die "a package under $tree still imports the AWS or Google credential provider"
    fi
}

# Generate pkg/generated/openapi/zz_generated.openapi.go, which the source
# tarball lacks and kube-apiserver needs.
generate_openapi() {
    local tree="$1"
    local openapi_gen="$XTM_KUBE_BUILD_DIR/tools/openapi-gen"
    mkdir -p "$(dirname "$openapi_gen")"
    log "building openapi-gen"
    (cd "$tree" && go build -o "$openapi_gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen)

    # vendor/k8s.io/* are symlinks into staging/, so grep must follow them (-R).
    local input_dirs
    input_dirs=$(
        cd "$tree" &&
            grep -Rl --include='*.go' -- '+k8s:openapi-gen=' pkg vendor cmd plugin |
                xargs -n 1 dirname |
                grep -v -e '^vendor/k8s.io/code-generator' -e '^vendor/k8s.io/sample-apiserver' |
                sort -u |
                sed 's|^|k8s.io/kubernetes/|' |
                paste -sd ,
    )
    [[ -n "$input_dirs" ]] || die "no package with a +k8s:openapi-gen= tag found under $tree"

    log "generating pkg/generated/openapi/zz_generated.openapi.go from $(tr ',' '\n' <<<"$input_dirs" | wc -l) packages"
    (cd "$tree" && "$openapi_gen" \
        -i "$input_dirs" \
        -p k8s.io/kubernetes/pkg/generated/openapi \
        -O zz_generated.openapi \
        -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
        -r "$XTM_KUBE_BUILD_DIR/openapi-violations.report" \
        --output-base "$GOPATH/src")
    [[ -s "$tree/pkg/generated/openapi/zz_generated.openapi.go" ]] ||
        die "openapi-gen did not write $tree/pkg/generated/openapi/zz_generated.openapi.go"
}

build_binaries() {
    local tree="$1" output_dir="$2"
    local version_package="k8s.io/kubernetes/vendor/k8s.io/component-base/version"
    local client_version_package="k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version"
    local build_date ldflags="" package
    build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    # Without these values the binaries report version v0.0.0-master.
    for package in "$version_package" "$client_version_package"; do
        ldflags+=" -X '$package.gitVersion=v$KUBE_VERSION'"
        ldflags+=" -X '$package.gitMajor=1' -X '$package.gitMinor=20'"
        ldflags+=" -X '$package.gitTreeState=archive' -X '$package.buildDate=$build_date'"
    done

    mkdir -p "$output_dir"
    local binary binary_start
    for binary in "${KUBE_BINARIES[@]}"; do
        binary_start=$(date +%s)
        log "building $binary"
        (cd "$tree" && go build -ldflags "$ldflags" -o "$output_dir/$binary" "./cmd/$binary")
        log "built $binary in $(($(date +%s) - binary_start)) s"
    done

    # Both strings come from the providers that remove_cloud_credential_providers drops.
    if grep -q -e 'while getting AWS credentials' -e 'google-container-registry' "$output_dir/kubelet"; then
        die "$output_dir/kubelet still contains a cloud credential provider"
    fi
    printf '%s\n' "$BUILD_RECIPE" >"$output_dir/recipe"
}

main() {
    if cache_is_complete; then
        log "Kubernetes v$KUBE_VERSION binaries already cached in $XTM_KUBE_CACHE ($(elapsed) s)"
        return
    fi
    [[ $EUID -eq 0 ]] || die "the build installs Debian packages and must run as root: rerun it with sudo"

    mkdir -p "$XTM_KUBE_BUILD_DIR"
    # Serialize concurrent builds, for example from two testbed directories. File descriptor 9
    # is taken by lock_testbed in lib.sh.
    exec 8>"$XTM_KUBE_BUILD_DIR/.lock"
    flock 8
    if cache_is_complete; then
        log "binaries cached by a concurrent build in $XTM_KUBE_CACHE ($(elapsed) s)"
        return
    fi

    ensure_packages "${BUILD_PACKAGES[@]}"
    ensure_deb_src_entry

    local tree
    tree=$(unpack_source)
    replace_reflect2 "$tree"
    remove_cloud_credential_providers "$tree"

    export GOPATH="$XTM_KUBE_BUILD_DIR/gopath"
    export GOCACHE="$XTM_KUBE_BUILD_DIR/go-build-cache"
    export GO111MODULE=off CGO_ENABLED=0 GOFLAGS=""
    mkdir -p "$GOPATH/src/k8s.io"
    ln -sfn "$tree" "$GOPATH/src/k8s.io/kubernetes"
    # GOPATH mode resolves imports only from inside GOPATH, so work in the link.
    tree="$GOPATH/src/k8s.io/kubernetes"
    log "using $(go version)"

    generate_openapi "$tree"
    log "generated OpenAPI definitions ($(elapsed) s)"

    local staging_dir="$XTM_KUBE_CACHE.partial"
    rm -rf "$staging_dir"
    build_binaries "$tree" "$staging_dir"

    rm -rf "$XTM_KUBE_CACHE"
    mkdir -p "$(dirname "$XTM_KUBE_CACHE")"
    mv "$staging_dir" "$XTM_KUBE_CACHE"
    log "cached ${KUBE_BINARIES[*]} in $XTM_KUBE_CACHE"
    "$XTM_KUBE_CACHE/kube-apiserver" --version >&2
    log "Kubernetes build finished in $(elapsed) s"
}

main "$@"
