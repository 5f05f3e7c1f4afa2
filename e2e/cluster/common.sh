# Shared settings for the e2e cluster scripts. Sourced, not executed:
#   . "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# Every value can be overridden from the environment (see README.md).
# shellcheck shell=bash disable=SC2034 # the variables are used by the scripts that source this

CLUSTER_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# modver MODULE_DIR MODULE_PATH -> the version MODULE_DIR/go.mod requires.
modver() {
  awk -v m="$2" '$1 == "replace" || $2 == "=>" { next }
    { for (i = 1; i < NF; i++) if ($i == m && $(i + 1) ~ /^v/) { print $(i + 1); exit } }' \
    "$CLUSTER_SRC/$1/go.mod"
}

K8S_VERSION=$(modver kubernetes k8s.io/kubernetes)
ETCD_VERSION=$(modver etcd go.etcd.io/etcd/server/v3)
KWOK_VERSION=$(modver kwok sigs.k8s.io/kwok)
HELM_VERSION=$(modver helm helm.sh/helm/v3)

TRACELIGHT_CACHE=${TRACELIGHT_CACHE:-$HOME/.cache/tracelight}
BIN_DIR=${TRACELIGHT_BIN_DIR:-$TRACELIGHT_CACHE/bin/k8s-$K8S_VERSION}
STATE_DIR=${TRACELIGHT_CLUSTER_DIR:-$TRACELIGHT_CACHE/cluster}

# Loopback ports. Every server binds to 127.0.0.1 only.
API_PORT=${TRACELIGHT_API_PORT:-6443}
ETCD_PORT=${TRACELIGHT_ETCD_PORT:-2379}
ETCD_PEER_PORT=${TRACELIGHT_ETCD_PEER_PORT:-2380}
KCM_PORT=${TRACELIGHT_KCM_PORT:-10257}
SCHED_PORT=${TRACELIGHT_SCHEDULER_PORT:-10259}
KWOK_PORT=${TRACELIGHT_KWOK_PORT:-10247}
NODE_COUNT=${TRACELIGHT_NODES:-3}
# Client rate limit (requests/s) of kube-controller-manager and kube-scheduler.
CONTROLLER_QPS=${TRACELIGHT_CONTROLLER_QPS:-200}

# Components in start order (down.sh stops them clients first, etcd last).
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# pid_of NAME -> pid from STATE_DIR/run/NAME.pid if that process is alive.
pid_of() {
  local f="$STATE_DIR/run/$1.pid" pid exe
  [[ -s $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  # Guard against pid reuse: the process must still be our binary.
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || exe=
  [[ -z $exe || ${exe##*/} == "$1" || ${exe##*/} == "$1 (deleted)" ]] || return 1
  printf '%s\n' "$pid"
}
