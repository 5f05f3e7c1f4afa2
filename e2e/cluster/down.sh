#!/usr/bin/env bash
# Usage: e2e/cluster/down.sh [--purge]
#
# Stops the e2e cluster started by up.sh: each component by its pid file in
# $STATE/run (kwok, scheduler and controller-manager, then the apiserver,
# then etcd), with SIGTERM and then SIGKILL after
# $TRACELIGHT_STOP_TIMEOUT seconds (default 15). Idempotent: stopping a
# stopped cluster is fine. Certificates, etcd data and logs are kept, so the
# next up.sh resumes the same cluster; --purge deletes the whole state dir
# (${TRACELIGHT_CLUSTER_DIR:-$HOME/.cache/tracelight/cluster}) as well.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

purge=false
case ${1-} in
  --purge) purge=true ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "unknown argument '$1' (see --help)" ;;
esac

TIMEOUT=${TRACELIGHT_STOP_TIMEOUT:-15}
stopped=0

# stop NAME... : SIGTERM every named component, wait for all of them, then
# SIGKILL whatever is left after TIMEOUT seconds.
stop() {
  local name pid i alive
  local -a pids=()
  for name in "$@"; do
    if pid=$(pid_of "$name"); then
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      stopped=$((stopped + 1))
    fi
  done
  for ((i = 0; i < TIMEOUT * 10; i++)); do
    alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    ((${#alive[@]} > 0)) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid still running after ${TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for ((i = 0; i < 50; i++)); do
    alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    ((${#alive[@]} > 0)) || break
    sleep 0.1
  done
  ((${#alive[@]} == 0)) || die "could not stop pids ${alive[*]}"
  for name in "$@"; do rm -f "$STATE_DIR/run/$name.pid"; done
}

# Clients first, then the apiserver, then its storage.
stop kwok kube-scheduler kube-controller-manager
stop kube-apiserver
stop etcd

if ((stopped == 0)); then
  log "cluster is not running"
else
  log "cluster stopped ($stopped processes)"
fi

if $purge && [[ -d $STATE_DIR ]]; then
  # Refuse obviously wrong targets before rm -rf.
  [[ -f $STATE_DIR/pki/ca.crt || -d $STATE_DIR/run || -d $STATE_DIR/etcd ]] ||
    die "$STATE_DIR does not look like a cluster state dir; not deleting it"
  rm -rf -- "$STATE_DIR"
  log "removed $STATE_DIR"
fi
