#!/usr/bin/env bash
# Usage: e2e/cluster/up.sh
#
# Starts a real Kubernetes control plane on loopback for tests: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler and kwok, which
# plays the kubelet for $TRACELIGHT_NODES (3) fake nodes, so pods get
# scheduled, become Running/Ready, and Job pods complete; no containers run.
#
# Binaries come from build.sh (run automatically; cached after the first
# build). State (certificates, etcd data, kubeconfigs, pid files, logs) lives
# in ${TRACELIGHT_CLUSTER_DIR:-$HOME/.cache/tracelight/cluster}. The admin
# kubeconfig is $STATE/kubeconfig; its path is the last line on stdout:
#   export KUBECONFIG=$(e2e/cluster/up.sh | tail -n1)
# Idempotent: if the cluster is already up and healthy it says so and exits 0.
# Processes run detached (own session, all fds redirected), so callers such
# as make or a test harness are never held open. Stop with down.sh.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

case ${1-} in
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "unknown argument '$1' (see --help)" ;;
esac

PKI=$STATE_DIR/pki
RUN=$STATE_DIR/run
LOGS=$STATE_DIR/logs
KUBECONFIG_ADMIN=$STATE_DIR/kubeconfig
SERVICE_CIDR=10.0.0.0/24
POD_CIDR=${TRACELIGHT_POD_CIDR:-10.244.0.0/16}
# The apiserver publishes this address in the `kubernetes` Service
# endpoints. It must not be loopback (Endpoints validation rejects it), so the
# default is the first host of the service range; nothing dials it here.
ADVERTISE_ADDRESS=${TRACELIGHT_ADVERTISE_ADDRESS:-10.0.0.1}
WAIT_SECONDS=${TRACELIGHT_WAIT_SECONDS:-120}

t0=$(date +%s)

kubectl() { "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

api_ready() {
  curl -fsS --max-time 3 --cacert "$PKI/ca.crt" "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1
}

nodes_ready() {
  local n
  n=$(kubectl get nodes -l type=kwok --no-headers 2>/dev/null | awk '$2 == "Ready"' | wc -l)
  ((n >= NODE_COUNT))
}

all_running() {
  local c
  for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null || return 1; done
}

print_result() {
  local took=$(($(date +%s) - t0))
  cat >&2 <<EOF

Cluster is up ($1, ${took}s): Kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION
  apiserver   https://127.0.0.1:$API_PORT
  state dir   $STATE_DIR (logs in $LOGS)
  binaries    $BIN_DIR
  use it:     export KUBECONFIG=$KUBECONFIG_ADMIN PATH=$BIN_DIR:\$PATH
EOF
  echo "$KUBECONFIG_ADMIN"
}

FAILED_LOG=
# launch NAME ARGS... : run ARGS detached in a new session with stdin from
# /dev/null, stdout/stderr to $LOGS/NAME.log and every other inherited fd
# closed, recording its pid (the wrapper shell execs, so the pid is the
# process's own) in $RUN/NAME.pid.
launch() {
  local name=$1 pidf="$RUN/$1.pid" logf="$LOGS/$1.log"
  shift
  [[ ! -f $logf ]] || mv -f "$logf" "$logf.prev"
  printf '==== %s starting: %s\n' "$(date -u +%FT%TZ)" "$*" >"$logf"
  rm -f "$pidf"
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid -f bash -c 'for fd in /proc/$$/fd/*; do n=${fd##*/}; if ((n > 2)); then eval "exec $n>&-"; fi; done
    echo $$ >"$0"; exec "$@"' "$pidf" "$@" </dev/null >>"$logf" 2>&1
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -s $pidf ]] && return 0
    sleep 0.1
  done
  FAILED_LOG=$logf
  log "$name did not start"
  return 1
}

# wait_until NAME SECONDS CMD... : poll CMD until it succeeds; fail early if
# NAME's process exits.
wait_until() {
  local name=$1 secs=$2 deadline
  shift 2
  deadline=$(($(date +%s) + secs))
  until "$@"; do
    if ! pid_of "$name" >/dev/null; then
      FAILED_LOG=$LOGS/$name.log
      log "$name exited during startup"
      return 1
    fi
    if (($(date +%s) >= deadline)); then
      FAILED_LOG=$LOGS/$name.log
      log "timed out after ${secs}s waiting for $name"
      return 1
    fi
    sleep 0.5
  done
}

http_ok() { curl -fsS --max-time 3 "$@" >/dev/null 2>&1; }

# kwok's Stages: its own defaults (from build.sh) and the suite's extra ones
# (kwok-stages-e2e.yaml: e.g. injected pods labelled to crash-loop). Its
# options go on the command line: a KwokConfiguration document in --config
# replaces kwok's defaults instead of being merged with them.
kwok_config() { cat "$BIN_DIR/kwok-stages.yaml" "$CLUSTER_SRC/kwok-stages-e2e.yaml"; }

start_kwok() {
  log "starting kwok (http://127.0.0.1:$KWOK_PORT/healthz)"
  launch kwok "$BIN_DIR/kwok" \
    --kubeconfig="$RUN/kwok.kubeconfig" \
    --config="$RUN/kwok.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --cidr="$POD_CIDR" \
    --node-ip=127.0.0.1 \
    --node-lease-duration-seconds=40 \
    --server-address="127.0.0.1:$KWOK_PORT"
}

# Nodes kwok plays the kubelet for (up.sh's and any a test added).
kwok_nodes() {
  kubectl get nodes --no-headers -o custom-columns='N:.metadata.name,A:.metadata.annotations.kwok\.x-k8s\.io/node' |
    awk '$2 == "fake" { print $1 }'
}

# Every kwok node has its heartbeat Lease (kwok manages a node's pods only
# while it holds that Lease).
kwok_leases() {
  local n
  for n in $(kwok_nodes); do kubectl -n kube-node-lease get lease "$n" -o name >/dev/null 2>&1 || return 1; done
}

# A running cluster whose kwok has other Stages than this checkout wants (the
# file changed): restart kwok alone with the new ones. Nodes stay Ready and
# pods keep their state. The old kwok's node Leases are deleted, or the new
# one would leave every pod alone until they expire (40s); pods created in the
# second or two without kwok are played once it is back.
restart_kwok() {
  local pid i
  log "kwok's stage config changed; restarting kwok alone"
  if pid=$(pid_of kwok); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  # shellcheck disable=SC2046 # one node name per word
  kubectl -n kube-node-lease delete lease --ignore-not-found $(kwok_nodes) >/dev/null
  kwok_config >"$RUN/kwok.yaml"
  if ! { start_kwok && wait_until kwok 60 http_ok "http://127.0.0.1:$KWOK_PORT/healthz" &&
    wait_until kwok 60 kwok_leases && wait_until kwok "$WAIT_SECONDS" nodes_ready; }; then
    tail -n 40 "$LOGS/kwok.log" >&2 || true
    die "kwok did not come back with the new stages (log: $LOGS/kwok.log)"
  fi
}

# ---------------------------------------------------------------- idempotence
if all_running && [[ -s $KUBECONFIG_ADMIN ]] && api_ready && nodes_ready; then
  if kwok_config | cmp -s - "$RUN/kwok.yaml"; then
    log "cluster already up and healthy"
    print_result "already running"
  else
    restart_kwok
    print_result "already running; kwok restarted with new stages"
  fi
  exit 0
fi
if [[ -d $RUN ]] && compgen -G "$RUN/*.pid" >/dev/null; then
  log "cluster is partly up or unhealthy; restarting it (data is kept)"
  "$CLUSTER_SRC/down.sh" >&2
fi

# ------------------------------------------------------------------ binaries
command -v openssl >/dev/null || die "openssl is required (apt-get install openssl)"
command -v curl >/dev/null || die "curl is required (apt-get install curl)"
if command -v go >/dev/null 2>&1; then
  BIN_DIR=$("$CLUSTER_SRC/build.sh" | tail -n1)
elif [[ -x $BIN_DIR/kube-apiserver ]]; then
  log "warning: no 'go' on PATH, using the binaries already in $BIN_DIR without checking them"
else
  die "no 'go' on PATH and no binaries in $BIN_DIR: install Go >= 1.26 and run $CLUSTER_SRC/build.sh"
fi
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok; do
  [[ -x $BIN_DIR/$b ]] || die "$BIN_DIR/$b is missing after build.sh"
done

# --------------------------------------------------------------------- ports
port_owner() { # PORT -> description of the listener, empty if free
  local line
  line=$(ss -Hltnp "sport = :$1" 2>/dev/null | head -n1) || true
  if [[ -n $line ]]; then
    if [[ $line =~ users:\(\(\"([^\"]+)\",pid=([0-9]+) ]]; then
      echo "${BASH_REMATCH[1]} (pid ${BASH_REMATCH[2]})"
    else
      echo "another process"
    fi
  elif (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "another process"
  fi
}
for spec in "API:$API_PORT:TRACELIGHT_API_PORT" "etcd:$ETCD_PORT:TRACELIGHT_ETCD_PORT" \
  "etcd peer:$ETCD_PEER_PORT:TRACELIGHT_ETCD_PEER_PORT" "controller-manager:$KCM_PORT:TRACELIGHT_KCM_PORT" \
  "scheduler:$SCHED_PORT:TRACELIGHT_SCHEDULER_PORT" "kwok:$KWOK_PORT:TRACELIGHT_KWOK_PORT"; do
  IFS=: read -r what port var <<<"$spec"
  owner=$(port_owner "$port")
  [[ -z $owner ]] || die "port $port ($what) on 127.0.0.1 is taken by $owner; stop it or set $var to a free port"
done

# ------------------------------------------------------------- certificates
mkdir -p "$PKI" "$RUN" "$LOGS"
chmod 700 "$STATE_DIR" "$PKI"

new_ca() { # NAME CN
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "/CN=$2" \
    -keyout "$PKI/$1.key" -out "$PKI/$1.crt" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
}

new_cert() { # NAME CA SUBJECT EKU [SANS]
  local name=$1 ca=$2 subj=$3 eku=$4 sans=${5-}
  openssl req -new -newkey rsa:2048 -nodes -subj "$subj" \
    -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -z $sans ]] || echo "subjectAltName=$sans"
  } >"$PKI/$name.ext"
  openssl x509 -req -sha256 -days 3650 -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

if [[ ! -s $PKI/.complete ]]; then
  log "generating certificates in $PKI"
  (
    umask 077
    new_ca ca tracelight-e2e-ca
    new_ca front-proxy-ca tracelight-e2e-front-proxy-ca
    new_cert apiserver ca "/CN=kube-apiserver" serverAuth \
      "IP:127.0.0.1,IP:10.0.0.1,IP:$ADVERTISE_ADDRESS,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    new_cert admin ca "/O=system:masters/CN=tracelight-admin" clientAuth
    new_cert kube-controller-manager ca "/CN=system:kube-controller-manager" clientAuth
    new_cert kube-scheduler ca "/CN=system:kube-scheduler" clientAuth
    # kwok acts for every fake node; the Node authorizer only covers
    # system:node:<name> identities one at a time, so give it cluster-admin.
    new_cert kwok ca "/O=system:masters/CN=kwok-controller" clientAuth
    new_cert front-proxy-client front-proxy-ca "/CN=front-proxy-client" clientAuth
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    date -u +%FT%TZ >"$PKI/.complete"
  ) || die "certificate generation with openssl failed"
fi

write_kubeconfig() { # FILE CERTNAME
  local user=$2
  (
    umask 077
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tracelight-e2e
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$2.crt")
    client-key-data: $(base64 -w0 "$PKI/$2.key")
contexts:
- name: tracelight-e2e
  context:
    cluster: tracelight-e2e
    user: $user
current-context: tracelight-e2e
EOF
  )
}
write_kubeconfig "$KUBECONFIG_ADMIN" admin
for c in kube-controller-manager kube-scheduler kwok; do
  write_kubeconfig "$RUN/$c.kubeconfig" "$c"
done

# kwok has no built-in Stages: see kwok_config.
kwok_config >"$RUN/kwok.yaml"

# ----------------------------------------------------------------- processes
on_error() {
  local rc=$?
  if [[ -n $FAILED_LOG && -f $FAILED_LOG ]]; then
    printf '\n---- last 40 lines of %s ----\n' "$FAILED_LOG" >&2
    tail -n 40 "$FAILED_LOG" >&2
    printf -- '---- end of %s ----\n' "$FAILED_LOG" >&2
  fi
  log "cluster-up failed; stopping what was started (logs kept in $LOGS)"
  "$CLUSTER_SRC/down.sh" >&2 || true
  exit "$rc"
}
trap on_error ERR


log "starting etcd on 127.0.0.1:$ETCD_PORT"
launch etcd "$BIN_DIR/etcd" \
  --name=tracelight-e2e \
  --data-dir="$STATE_DIR/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="tracelight-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
  --unsafe-no-fsync=true \
  --log-level=warn
wait_until etcd 60 http_ok "http://127.0.0.1:$ETCD_PORT/health"

log "starting kube-apiserver on https://127.0.0.1:$API_PORT"
launch kube-apiserver "$BIN_DIR/kube-apiserver" \
  --bind-address=127.0.0.1 \
  --secure-port="$API_PORT" \
  --advertise-address="$ADVERTISE_ADDRESS" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --client-ca-file="$PKI/ca.crt" \
  --tls-cert-file="$PKI/apiserver.crt" \
  --tls-private-key-file="$PKI/apiserver.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook \
  --allow-privileged=true \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
  --requestheader-allowed-names=front-proxy-client \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --requestheader-group-headers=X-Remote-Group \
  --requestheader-username-headers=X-Remote-User \
  --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
  --proxy-client-key-file="$PKI/front-proxy-client.key" \
  --profiling=false
wait_until kube-apiserver "$WAIT_SECONDS" api_ready

for c in kube-controller-manager kube-scheduler; do
  port=$KCM_PORT
  [[ $c == kube-scheduler ]] && port=$SCHED_PORT
  args=(
    --kubeconfig="$RUN/$c.kubeconfig"
    --authentication-kubeconfig="$RUN/$c.kubeconfig"
    --authorization-kubeconfig="$RUN/$c.kubeconfig"
    --bind-address=127.0.0.1
    --secure-port="$port"
    --leader-elect=false
    --profiling=false
  )
  if [[ $c == kube-controller-manager ]]; then
    # "*" is every controller that is on by default; none of those needs a
    # cloud provider. Without kubelets there is nothing to garbage-collect
    # on nodes' behalf, so the default set is right as is.
    args+=(
      --controllers='*'
      --use-service-account-credentials=true
      --root-ca-file="$PKI/ca.crt"
      --service-account-private-key-file="$PKI/sa.key"
      --cluster-signing-cert-file="$PKI/ca.crt"
      --cluster-signing-key-file="$PKI/ca.key"
      --service-cluster-ip-range="$SERVICE_CIDR"
      --cluster-name=tracelight-e2e
      --cert-dir="$RUN/$c-certs"
      # The default client rate (20/s per controller) makes kwok pods slow to
      # come and go by the thousand (make bench-scale); kwok itself is unlimited.
      --kube-api-qps="$CONTROLLER_QPS"
      --kube-api-burst=$((CONTROLLER_QPS * 2))
    )
  else
    args+=(
      --cert-dir="$RUN/$c-certs"
      --kube-api-qps="$CONTROLLER_QPS"
      --kube-api-burst=$((CONTROLLER_QPS * 2))
    )
  fi
  log "starting $c (https://127.0.0.1:$port/healthz)"
  launch "$c" "$BIN_DIR/$c" "${args[@]}"
done

start_kwok

wait_until kube-controller-manager 60 http_ok -k "https://127.0.0.1:$KCM_PORT/healthz"
wait_until kube-scheduler 60 http_ok -k "https://127.0.0.1:$SCHED_PORT/healthz"
wait_until kwok 60 http_ok "http://127.0.0.1:$KWOK_PORT/healthz"

# ---------------------------------------------------------------------- nodes
log "registering $NODE_COUNT kwok nodes"
nodes_yaml() {
  local i
  for ((i = 0; i < NODE_COUNT; i++)); do
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
status:
  allocatable:
    cpu: "32"
    memory: 256Gi
    pods: "110"
  capacity:
    cpu: "32"
    memory: 256Gi
    pods: "110"
  nodeInfo:
    architecture: amd64
    kubeletVersion: fake
    kubeProxyVersion: fake
    operatingSystem: linux
EOF
  done
}
FAILED_LOG=$LOGS/kwok.log
nodes_yaml | kubectl apply -f - >/dev/null
wait_until kwok "$WAIT_SECONDS" nodes_ready
# Pods can only be created once the namespace's default ServiceAccount
# exists; that is the controller-manager's first job, so wait for it too.
FAILED_LOG=$LOGS/kube-controller-manager.log
default_sa() { kubectl -n default get serviceaccount default -o name >/dev/null 2>&1; }
wait_until kube-controller-manager 60 default_sa
FAILED_LOG=
trap - ERR

kubectl get nodes -o wide >&2
print_result "started"
