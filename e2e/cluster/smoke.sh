#!/usr/bin/env bash
# Usage: e2e/cluster/smoke.sh
#
# Proves a running e2e cluster (up.sh) works end to end: creates a namespace,
# a 2-replica Deployment and a Job (fake images; kwok runs nothing), waits
# until both Deployment pods are Running and Ready and the Job is Complete,
# then deletes the namespace and waits for it to be gone. Exits non-zero with
# a message and a dump of the namespace on failure.
# Uses $KUBECONFIG if set, else the cluster's $STATE/kubeconfig;
# TRACELIGHT_SMOKE_TIMEOUT (seconds, default 120) bounds each wait.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

case ${1-} in
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "unknown argument '$1' (see --help)" ;;
esac

export KUBECONFIG=${KUBECONFIG:-$STATE_DIR/kubeconfig}
TIMEOUT=${TRACELIGHT_SMOKE_TIMEOUT:-120}
KUBECTL=$BIN_DIR/kubectl
[[ -x $KUBECTL ]] || KUBECTL=$(command -v kubectl) || die "no kubectl in $BIN_DIR or on PATH; run build.sh"
kubectl() { "$KUBECTL" "$@"; }

t0=$(date +%s)
kubectl get --raw /readyz >/dev/null 2>&1 ||
  die "cannot reach the cluster with KUBECONFIG=$KUBECONFIG; start it with e2e/cluster/up.sh"

NS=tracelight-smoke-$(date +%s)-$$
created=false

fail() {
  printf 'SMOKE FAILED: %s\n' "$*" >&2
  if $created; then
    printf -- '---- state of namespace %s ----\n' "$NS" >&2
    kubectl -n "$NS" get deploy,rs,job,pods -o wide >&2 || true
    kubectl -n "$NS" get events --sort-by=.lastTimestamp >&2 || true
  fi
  exit 1
}

cleanup() {
  if $created; then
    kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

log "creating namespace $NS with a Deployment (2 replicas) and a Job"
kubectl create namespace "$NS" >/dev/null || fail "cannot create namespace $NS"
created=true
kubectl -n "$NS" apply -f - >/dev/null <<'EOF' || fail "cannot create the Deployment and Job"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: smoke-app
spec:
  replicas: 2
  selector:
    matchLabels: {app: smoke-app}
  template:
    metadata:
      labels: {app: smoke-app}
    spec:
      # The namespace controller re-checks a namespace after the remaining
      # grace period of its pods (30s by default), so keep it short.
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: registry.example/app:1
        resources:
          requests: {cpu: 100m, memory: 64Mi}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: smoke-job
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: job
        image: registry.example/job:1
        command: ["true"]
EOF

log "waiting for the Deployment rollout"
kubectl -n "$NS" rollout status deployment/smoke-app --timeout="${TIMEOUT}s" >/dev/null ||
  fail "Deployment smoke-app did not become available within ${TIMEOUT}s"
kubectl -n "$NS" wait pod -l app=smoke-app --for=condition=Ready --timeout="${TIMEOUT}s" >/dev/null ||
  fail "Deployment pods did not become Ready within ${TIMEOUT}s"
phases=$(kubectl -n "$NS" get pods -l app=smoke-app -o jsonpath='{range .items[*]}{.metadata.name}={.status.phase}/{.spec.nodeName}{"\n"}{end}')
running=$(grep -c '=Running/kwok-node-' <<<"$phases" || true)
((running == 2)) || fail "expected 2 Running pods scheduled on kwok nodes, got: $(tr '\n' ' ' <<<"$phases")"
log "Deployment pods Running+Ready: $(tr '\n' ' ' <<<"$phases")"

log "waiting for the Job to complete"
kubectl -n "$NS" wait job/smoke-job --for=condition=Complete --timeout="${TIMEOUT}s" >/dev/null ||
  fail "Job smoke-job did not complete within ${TIMEOUT}s"
log "Job complete: $(kubectl -n "$NS" get job smoke-job -o jsonpath='{.status.succeeded}') succeeded"

log "deleting namespace $NS"
kubectl delete namespace "$NS" --timeout="${TIMEOUT}s" >/dev/null ||
  fail "namespace $NS was not deleted within ${TIMEOUT}s"
created=false

log "smoke test passed in $(($(date +%s) - t0))s"
