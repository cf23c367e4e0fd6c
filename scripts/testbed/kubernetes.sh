#!/usr/bin/env bash
# Start, stop or report a one-node Kubernetes v1.20.2 cluster for the tests.
#
# Usage: kubernetes.sh up|down|status
#
# `up` builds or reuses the binaries (kubernetes-build.sh), starts the testbed dockerd
# (docker.sh up), then etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a kubelet
# that runs pods in that dockerd. Everything listens on 127.0.0.1 only and keeps its state, logs
# and pidfiles under $XTM_TESTBED_DIR/kubernetes. The node is called "localhost". Pods must use
# `hostNetwork: true` because no CNI plugin is installed. The Service IP range is 198.18.0.0/24.
#
# `. "$XTM_TESTBED_DIR/kubernetes.env"` then exports:
#   XTM_TEST_KUBECONFIG             kubeconfig of xtm-admin, a member of system:masters
#   XTM_TEST_KUBECONFIG_RESTRICTED  kubeconfig of xtm-restricted, a user with no groups and no
#                                   RoleBinding: requests on secrets, pods or deployments return
#                                   403, while discovery and SelfSubjectAccessReview still work
# Both kubeconfigs trust the apiserver's self-signed certificate for https://127.0.0.1:6443.
#
# `down` stops the cluster and removes the containers that the kubelet created in the testbed
# dockerd, but keeps the state, so a later `up` finds the same objects, tokens and certificate.
# It leaves the dockerd and the registries running, because up.sh and down.sh own them.
# `up` and `down` need root.
#
# NOTE: the kubelet 1.20 always writes container log links under /var/log/pods and
# /var/log/containers, outside the testbed directory. It removes them when the pods are deleted.
set -euo pipefail
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

XTM_KUBE_CACHE="${XTM_KUBE_CACHE:-/var/cache/xtm-composer/kubernetes-v1.20.2/bin}"
export XTM_KUBE_CACHE

KUBE_DIR="$XTM_TESTBED_DIR/kubernetes"
KUBE_RUN_DIR="$KUBE_DIR/run"
KUBE_LOG_DIR="$KUBE_DIR/log"
KUBE_ENV_FILE="$XTM_TESTBED_DIR/kubernetes.env"

ETCD_DATA_DIR="$KUBE_DIR/etcd"
APISERVER_CERT_DIR="$KUBE_DIR/apiserver-certs"
APISERVER_CERT="$APISERVER_CERT_DIR/apiserver.crt"
SERVICE_ACCOUNT_KEY="$KUBE_DIR/service-account.key"
SERVICE_ACCOUNT_PUBLIC_KEY="$KUBE_DIR/service-account.pub"
TOKEN_FILE="$KUBE_DIR/tokens.csv"
KUBELET_ROOT_DIR="$KUBE_DIR/kubelet"
KUBELET_CONFIG="$KUBE_DIR/kubelet-config.yaml"
DOCKERSHIM_ROOT_DIR="$KUBE_DIR/dockershim"
DOCKERSHIM_SOCKET="$KUBE_RUN_DIR/dockershim.sock"

ADMIN_KUBECONFIG="$KUBE_DIR/admin.kubeconfig"
RESTRICTED_KUBECONFIG="$KUBE_DIR/restricted.kubeconfig"
CONTROLLER_MANAGER_KUBECONFIG="$KUBE_DIR/controller-manager.kubeconfig"
SCHEDULER_KUBECONFIG="$KUBE_DIR/scheduler.kubeconfig"
KUBELET_KUBECONFIG="$KUBE_DIR/kubelet.kubeconfig"

APISERVER_URL=https://127.0.0.1:6443
NODE_NAME=localhost
SERVICE_CLUSTER_IP_RANGE=198.18.0.0/24
PAUSE_IMAGE=xtm-testbed/pause:latest
NOT_READY_TAINT_KEY=node.kubernetes.io/not-ready

# Users of the token file as "user groups" pairs, where "-" means no group. Only system:masters
# members bypass RBAC. The controller-manager needs it because it runs every controller with its
# own credentials (no --use-service-account-credentials). The scheduler and the kubelet get the
# identities that the bootstrap RBAC roles and the Node authorizer expect.
TOKEN_USERS=(
    "xtm-admin system:masters"
    "xtm-restricted -"
    "system:kube-controller-manager system:masters"
    "system:kube-scheduler -"
    "system:node:$NODE_NAME system:nodes"
)

# TCP ports on 127.0.0.1 that each component listens on, and that must be free before it starts.
declare -A COMPONENT_PORTS=(
    [etcd]="2379 2380"
    [kube-apiserver]="6443"
    [kube-controller-manager]="10257"
    [kube-scheduler]="10259"
    [kubelet]="10248 10250"
)
START_ORDER=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet)

pidfile_of() {
    printf '%s/%s.pid' "$KUBE_RUN_DIR" "$1"
}

# Print a command-line argument that only this testbed's instance of COMPONENT has, so that
# pidfile_alive cannot mistake another process, or another testbed's, for it.
process_pattern() {
    case "$1" in
    etcd) printf '%s' "--data-dir $ETCD_DATA_DIR" ;;
    kube-apiserver) printf '%s' "--cert-dir $APISERVER_CERT_DIR" ;;
    kube-controller-manager) printf '%s' "--kubeconfig $CONTROLLER_MANAGER_KUBECONFIG" ;;
    kube-scheduler) printf '%s' "--kubeconfig $SCHEDULER_KUBECONFIG" ;;
    kubelet) printf '%s' "--root-dir $KUBELET_ROOT_DIR" ;;
    *) die "unknown component $1" ;;
    esac
}

component_running() {
    pidfile_alive "$(pidfile_of "$1")" "$(process_pattern "$1")"
}

# Print the token of USER from the token file.
token_of() {
    awk -F, -v user="$1" '$2 == user { print $1 }' "$TOKEN_FILE"
}

random_hex() {
    od -An -N 32 -tx1 /dev/urandom | tr -d ' \n'
}

# Create the service-account key pair and the token file once. Later runs keep them, so that
# kubeconfigs handed out earlier stay valid.
ensure_credentials() {
    mkdir -p "$KUBE_DIR" "$KUBE_RUN_DIR" "$KUBE_LOG_DIR"
    chmod 0700 "$KUBE_DIR"

    if [ ! -s "$SERVICE_ACCOUNT_KEY" ] || [ ! -s "$SERVICE_ACCOUNT_PUBLIC_KEY" ]; then
        log "creating the service-account key pair in $KUBE_DIR"
        (
            umask 077
            openssl genrsa -out "$SERVICE_ACCOUNT_KEY.new" 2048 2>/dev/null
            openssl rsa -in "$SERVICE_ACCOUNT_KEY.new" -pubout -out "$SERVICE_ACCOUNT_PUBLIC_KEY" 2>/dev/null
        )
        mv -f "$SERVICE_ACCOUNT_KEY.new" "$SERVICE_ACCOUNT_KEY"
    fi

    if [ ! -s "$TOKEN_FILE" ]; then
        log "creating random tokens in $TOKEN_FILE"
        local entry user groups
        (
            umask 077
            for entry in "${TOKEN_USERS[@]}"; do
                read -r user groups <<<"$entry"
                if [ "$groups" = - ]; then
                    printf '%s,%s,%s\n' "$(random_hex)" "$user" "$user"
                else
                    printf '%s,%s,%s,"%s"\n' "$(random_hex)" "$user" "$user" "$groups"
                fi
            done >"$TOKEN_FILE.new"
        )
        mv -f "$TOKEN_FILE.new" "$TOKEN_FILE"
    fi
}

# write_kubeconfig PATH USER
# Write a kubeconfig that authenticates USER with its bearer token and trusts the apiserver's
# self-signed certificate. The file contains the token, so only root may read it.
write_kubeconfig() {
    local path="$1" user="$2" token ca_data
    token="$(token_of "$user")"
    [ -n "$token" ] || die "no token for user $user in $TOKEN_FILE: remove the file and run up again"
    ca_data="$(base64 -w 0 "$APISERVER_CERT")"
    (
        umask 077
        cat >"$path.new" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: xtm-testbed
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $ca_data
users:
- name: $user
  user:
    token: $token
contexts:
- name: $user@xtm-testbed
  context:
    cluster: xtm-testbed
    user: $user
    namespace: default
current-context: $user@xtm-testbed
EOF
    )
    mv -f "$path.new" "$path"
}

write_kubeconfigs() {
    write_kubeconfig "$ADMIN_KUBECONFIG" xtm-admin
    write_kubeconfig "$RESTRICTED_KUBECONFIG" xtm-restricted
    write_kubeconfig "$CONTROLLER_MANAGER_KUBECONFIG" system:kube-controller-manager
    write_kubeconfig "$SCHEDULER_KUBECONFIG" system:kube-scheduler
    write_kubeconfig "$KUBELET_KUBECONFIG" "system:node:$NODE_NAME"
}

write_kubelet_config() {
    # The eviction thresholds are tiny so that a busy test machine does not evict test pods, and
    # image garbage collection is off so that the kubelet never removes the local pause image.
    # makeIPTablesUtilChains is off so that the kubelet leaves the host's iptables rules alone.
    cat >"$KUBELET_CONFIG.new" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
makeIPTablesUtilChains: false
EOF
    mv -f "$KUBELET_CONFIG.new" "$KUBELET_CONFIG"
}

# Add or replace the kubeconfig lines in kubernetes.env, keeping any other line in it.
write_env_file() {
    (
        umask 077
        {
            if [ -f "$KUBE_ENV_FILE" ]; then
                grep -v -E '^(export )?XTM_TEST_KUBECONFIG(_RESTRICTED)?=' "$KUBE_ENV_FILE" || true
            fi
            printf 'export XTM_TEST_KUBECONFIG=%q\n' "$ADMIN_KUBECONFIG"
            printf 'export XTM_TEST_KUBECONFIG_RESTRICTED=%q\n' "$RESTRICTED_KUBECONFIG"
        } >"$KUBE_ENV_FILE.new"
    )
    chmod 0600 "$KUBE_ENV_FILE.new"
    mv -f "$KUBE_ENV_FILE.new" "$KUBE_ENV_FILE"
}

# Python code behind kube_api. It reads the admin token from the token file rather than from the
# command line, where other local users could see it in the process list.
KUBE_API_PYTHON='
import json, ssl, sys, urllib.request
from datetime import datetime

server, ca_file, token_file = sys.argv[1:4]
command, args = sys.argv[4], sys.argv[5:]
with open(token_file) as tokens:
    token = next(line.split(",")[0] for line in tokens if line.split(",")[1] == "xtm-admin")
context = ssl.create_default_context(cafile=ca_file)

def request(method, path, body=None, content_type="application/json"):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, context=context, timeout=5) as response:
        return json.load(response) if path.startswith("/api") else response.read()

if command == "ready":
    request("GET", "/readyz")
elif command == "exists":
    request("GET", args[0])
elif command == "node-ready-since":
    # Ready only counts when the kubelet posted it after SINCE, because the node object keeps
    # its last status after the kubelet stops.
    node_name, since = args[0], float(args[1])
    node = request("GET", "/api/v1/nodes/" + node_name)
    for condition in node["status"].get("conditions", []):
        if condition["type"] == "Ready":
            heartbeat = datetime.strptime(condition["lastHeartbeatTime"], "%Y-%m-%dT%H:%M:%S%z")
            if condition["status"] == "True" and heartbeat.timestamp() >= since:
                sys.exit(0)
    sys.exit(1)
elif command == "remove-taint":
    node_name, key, effect = args
    node = request("GET", "/api/v1/nodes/" + node_name)
    taints = node["spec"].get("taints") or []
    remaining = [t for t in taints if not (t["key"] == key and t["effect"] == effect)]
    if len(remaining) != len(taints):
        # The resourceVersion makes the patch fail rather than drop a taint added meanwhile.
        patch = {"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                 "spec": {"taints": remaining}}
        request("PATCH", "/api/v1/nodes/" + node_name, patch, "application/merge-patch+json")
        print("removed")
else:
    sys.exit("unknown command " + command)
'

# kube_api COMMAND ARGS...
# Send admin requests to the apiserver: "ready", "exists PATH", "node-ready-since NODE EPOCH" and
# "remove-taint NODE KEY EFFECT". kubectl is not used because the machine may lack it, or have a
# version too far from 1.20.
kube_api() {
    python3 -c "$KUBE_API_PYTHON" "$APISERVER_URL" "$APISERVER_CERT" "$TOKEN_FILE" "$@"
}

# start_component NAME COMMAND...
start_component() {
    local name="$1" port
    shift
    if component_running "$name"; then
        log "$name already running (pid $(pidfile_pid "$(pidfile_of "$name")"))"
        return 0
    fi
    for port in ${COMPONENT_PORTS[$name]}; do
        if port_in_use "$port"; then
            die "cannot start $name: 127.0.0.1:$port is already in use by another process: stop it, or run kubernetes.sh down if it is a leftover of this testbed"
        fi
    done
    log "starting $name, log in $KUBE_LOG_DIR/$name.log"
    rm -f "$(pidfile_of "$name")"
    spawn_daemon "$(pidfile_of "$name")" "$KUBE_LOG_DIR/$name.log" "$@"
    # spawn_daemon returns before the forked shell has written the pidfile.
    wait_for 10 "the pidfile of $name" test -s "$(pidfile_of "$name")" ||
        die "$name did not write $(pidfile_of "$name"): see $KUBE_LOG_DIR/$name.log"
}

# wait_component NAME TIMEOUT_SECONDS DESCRIPTION COMMAND...
# Wait until COMMAND succeeds, failing early with the log tail when NAME exits.
wait_component() {
    local name="$1" timeout="$2" description="$3"
    shift 3
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ! component_running "$name"; then
            tail -n 20 "$KUBE_LOG_DIR/$name.log" >&2 || true
            die "$name exited during startup: see $KUBE_LOG_DIR/$name.log"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 20 "$KUBE_LOG_DIR/$name.log" >&2 || true
            die "timed out after ${timeout}s waiting for $description: see $KUBE_LOG_DIR/$name.log"
        fi
        sleep 0.2
    done
}

etcd_healthy() {
    curl --silent --fail --max-time 2 http://127.0.0.1:2379/health | grep -q '"health":"true"'
}

kubelet_healthy() {
    curl --silent --fail --max-time 2 http://127.0.0.1:10248/healthz
}

start_etcd() {
    start_component etcd etcd \
        --data-dir "$ETCD_DATA_DIR" \
        --listen-client-urls http://127.0.0.1:2379 \
        --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380
    wait_component etcd 60 "etcd on 127.0.0.1:2379" etcd_healthy
}

start_apiserver() {
    start_component kube-apiserver "$XTM_KUBE_CACHE/kube-apiserver" \
        --etcd-servers http://127.0.0.1:2379 \
        --bind-address 127.0.0.1 \
        --secure-port 6443 \
        --advertise-address 127.0.0.1 \
        --endpoint-reconciler-type none \
        --cert-dir "$APISERVER_CERT_DIR" \
        --token-auth-file "$TOKEN_FILE" \
        --authorization-mode Node,RBAC \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$SERVICE_ACCOUNT_PUBLIC_KEY" \
        --service-account-signing-key-file "$SERVICE_ACCOUNT_KEY" \
        --service-cluster-ip-range "$SERVICE_CLUSTER_IP_RANGE" \
        --allow-privileged \
        --kubelet-preferred-address-types Hostname
    # The apiserver writes its self-signed certificate before it serves, and the readiness
    # check needs the certificate to verify the connection.
    wait_component kube-apiserver 120 "the kube-apiserver certificate" test -s "$APISERVER_CERT"
    wait_component kube-apiserver 120 "kube-apiserver on $APISERVER_URL" kube_api ready
}

start_controller_manager() {
    # nodeipam, route and service need a cloud or a pod network. nodelifecycle is off so that
    # nothing taints or evicts the node while the kubelet is stopped. ttl only tunes large clusters.
    start_component kube-controller-manager "$XTM_KUBE_CACHE/kube-controller-manager" \
        --kubeconfig "$CONTROLLER_MANAGER_KUBECONFIG" \
        --bind-address 127.0.0.1 \
        --port 0 \
        --service-account-private-key-file "$SERVICE_ACCOUNT_KEY" \
        --root-ca-file "$APISERVER_CERT" \
        --controllers '*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-route,-service,-ttl'
}

start_scheduler() {
    start_component kube-scheduler "$XTM_KUBE_CACHE/kube-scheduler" \
        --kubeconfig "$SCHEDULER_KUBECONFIG" \
        --bind-address 127.0.0.1 \
        --port 0
}

ensure_pause_image() {
    if testbed_docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1; then
        return 0
    fi
    # images.sh pushes the test images too, so it needs the registries.
    log "image $PAUSE_IMAGE is missing from the testbed dockerd, running registry.sh up and images.sh"
    "$TESTBED_SCRIPTS_DIR/registry.sh" up
    "$TESTBED_SCRIPTS_DIR/images.sh"
    # Without the local image the kubelet would try to pull it from Docker Hub.
    testbed_docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1 ||
        die "images.sh did not create $PAUSE_IMAGE in the testbed dockerd"
}

start_kubelet() {
    # --docker-endpoint is for dockershim, which runs the pods. --docker is for the embedded
    # cAdvisor, which reads container stats and would otherwise connect to /var/run/docker.sock. The
    # dockershim socket and checkpoints default to /var/run and /var/lib, outside the testbed.
    start_component kubelet "$XTM_KUBE_CACHE/kubelet" \
        --kubeconfig "$KUBELET_KUBECONFIG" \
        --config "$KUBELET_CONFIG" \
        --container-runtime docker \
        --docker-endpoint "$TESTBED_DOCKER_HOST" \
        --docker "$TESTBED_DOCKER_HOST" \
        --container-runtime-endpoint "unix://$DOCKERSHIM_SOCKET" \
        --experimental-dockershim-root-directory "$DOCKERSHIM_ROOT_DIR" \
        --pod-infra-container-image "$PAUSE_IMAGE" \
        --root-dir "$KUBELET_ROOT_DIR" \
        --hostname-override "$NODE_NAME"
    wait_component kubelet 120 "the kubelet health check on 127.0.0.1:10248" kubelet_healthy
}

start_cluster() {
    local up_started=$SECONDS
    "$TESTBED_SCRIPTS_DIR/kubernetes-build.sh"
    "$TESTBED_SCRIPTS_DIR/docker.sh" up
    ensure_packages etcd-server openssl curl python3
    ensure_pause_image
    ensure_credentials
    write_kubelet_config

    local cluster_started=$SECONDS
    start_etcd
    start_apiserver
    write_kubeconfigs
    start_controller_manager
    start_scheduler

    # The node counts as Ready only from a status that this kubelet posted.
    local kubelet_started
    kubelet_started="$(date +%s)"
    if component_running kubelet; then
        kubelet_started=0
    fi
    start_kubelet
    wait_component kubelet 180 "node $NODE_NAME to be Ready" \
        kube_api node-ready-since "$NODE_NAME" "$((kubelet_started - 1))"
    log "node $NODE_NAME is Ready, $((SECONDS - cluster_started)) s after the first component start"

    # The node-lifecycle controller that would lift this taint is off.
    kube_api remove-taint "$NODE_NAME" "$NOT_READY_TAINT_KEY" NoSchedule >/dev/null
    wait_component kube-controller-manager 120 "the default ServiceAccount in namespace default" \
        kube_api exists /api/v1/namespaces/default/serviceaccounts/default
    local component
    for component in "${START_ORDER[@]}"; do
        component_running "$component" || die "$component exited: see $KUBE_LOG_DIR/$component.log"
    done

    write_env_file
    log "kubernetes ready in $((SECONDS - up_started)) s: . $KUBE_ENV_FILE"
}

# Remove the containers that the kubelet created through dockershim, which outlive the kubelet.
remove_pod_containers() {
    if ! testbed_docker info >/dev/null 2>&1; then
        return 0
    fi
    local containers
    containers="$(testbed_docker ps --all --quiet --filter label=io.kubernetes.docker.type)"
    if [ -n "$containers" ]; then
        log "removing $(wc -w <<<"$containers") pod containers from the testbed dockerd"
        # shellcheck disable=SC2086 # one argument per container id
        testbed_docker rm --force $containers >/dev/null
    fi
}

# Unmount the secret and service-account volumes that the kubelet left under its root dir, then
# the bind mount that the kubelet puts on the root dir itself, so that the directory can be deleted.
unmount_kubelet_volumes() {
    local mount_points mount_point
    mount_points="$(findmnt --raw --noheadings --output TARGET |
        awk -v root="$KUBELET_ROOT_DIR" '$0 == root || index($0, root "/") == 1' | sort -r)"
    for mount_point in $mount_points; do
        umount "$mount_point" || log "failed to unmount $mount_point, remove it by hand before deleting $KUBE_DIR"
    done
}

stop_cluster() {
    local index component
    stop_pidfile "$(pidfile_of kubelet)" "$(process_pattern kubelet)" kubelet 60
    remove_pod_containers
    unmount_kubelet_volumes
    for ((index = ${#START_ORDER[@]} - 2; index >= 0; index--)); do
        component="${START_ORDER[index]}"
        stop_pidfile "$(pidfile_of "$component")" "$(process_pattern "$component")" "$component" 60
    done
}

print_status() {
    local component all_running=true
    for component in "${START_ORDER[@]}"; do
        if component_running "$component"; then
            printf '%s: running (pid %s)\n' "$component" "$(pidfile_pid "$(pidfile_of "$component")")"
        else
            printf '%s: stopped\n' "$component"
            all_running=false
        fi
    done
    if ! $all_running; then
        return 3
    fi
    if kube_api node-ready-since "$NODE_NAME" 0 >/dev/null 2>&1; then
        printf 'node %s: Ready\n' "$NODE_NAME"
    else
        printf 'node %s: not Ready\n' "$NODE_NAME"
        return 3
    fi
}

require_root() {
    if [ "$(id -u)" -ne 0 ]; then
        die "kubernetes.sh $1 must run as root, because the kubelet manages mounts and containers"
    fi
}

case "${1:-}" in
up)
    require_root up
    lock_testbed
    start_cluster
    ;;
down)
    require_root down
    lock_testbed
    stop_cluster
    ;;
status)
    print_status
    ;;
*)
    usage_up_down_status
    ;;
esac
