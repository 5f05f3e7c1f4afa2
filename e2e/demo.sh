#!/usr/bin/env bash
# Usage: e2e/demo.sh [up|down]
#
# up (default; `make demo`): builds tracelight, starts the local control plane
# (e2e/cluster/up.sh), installs the chart with the webhook pointing at a local
# URL, runs the operator in the background as the chart's ServiceAccount,
# applies config/samples/, opts the namespace `demo` in, deploys a small app
# there and shows its injected pod; then runs the shop's inventory service there (on this host,
# with the pod runner; root) until a request becomes a trace in a real OpenTelemetry Collector,
# and prints it. Every claim it prints is checked first.
# Re-running it replaces the previous demo.
#
# down (`make demo-down`): stops the operator and removes everything the demo
# created; the cluster keeps running (`make cluster-down` stops it).
#
# Files: ${TRACELIGHT_CACHE:-~/.cache/tracelight}/demo/ (operator.pid,
# operator.log, operator.kubeconfig). Ports (127.0.0.1):
# TRACELIGHT_DEMO_WEBHOOK_PORT (9443), TRACELIGHT_DEMO_ADMIN_PORT (9080).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$REPO/e2e/cluster/common.sh"

DEMO_DIR=$TRACELIGHT_CACHE/demo
PID_FILE=$DEMO_DIR/operator.pid
OP_LOG=$DEMO_DIR/operator.log
OP_KUBECONFIG=$DEMO_DIR/operator.kubeconfig
WEBHOOK_PORT=${TRACELIGHT_DEMO_WEBHOOK_PORT:-9443}
ADMIN_PORT=${TRACELIGHT_DEMO_ADMIN_PORT:-9080}
RELEASE=tracelight
SYSTEM_NS=tracelight-system
DEMO_NS=demo
APP=checkout
CRD=tracingpolicies.tracelight.io
export KUBECONFIG=$STATE_DIR/kubeconfig
TIMEOUT=${TRACELIGHT_DEMO_TIMEOUT:-60}

kubectl() { "$BIN_DIR/kubectl" "$@"; }
helm() { "$BIN_DIR/helm" "$@"; }
say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
fail() {
  printf '\nDEMO FAILED: %s\n' "$*" >&2
  if [[ -f $OP_LOG ]]; then
    printf -- '---- last 30 lines of %s ----\n' "$OP_LOG" >&2
    tail -n 30 "$OP_LOG" >&2
  fi
  exit 1
}

# wait_for WHAT CMD...: polls CMD (quietly) until it succeeds, at most $TIMEOUT seconds.
wait_for() {
  local what=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after ${TIMEOUT}s waiting for $what"
    operator_alive || fail "the operator exited while waiting for $what"
    sleep 0.5
  done
}

operator_pid() { [[ -s $PID_FILE ]] && cat "$PID_FILE"; }
operator_alive() {
  local pid
  pid=$(operator_pid) || return 1
  kill -0 "$pid" 2>/dev/null
}

stop_operator() {
  local pid i
  pid=$(operator_pid) || return 0
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping the operator (pid $pid)"
    kill -TERM "$pid"
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "operator ignored SIGTERM for 20s; killing it"
      kill -KILL "$pid"
    fi
  fi
  rm -f "$PID_FILE"
}

cluster_reachable() { [[ -s $KUBECONFIG ]] && kubectl get --raw /readyz >/dev/null 2>&1; }

# Removes the demo's objects. Policies go first, while the operator can still run their
# cleanup finalizer; without an operator the finalizers are dropped.
remove_demo_objects() {
  if kubectl get crd "$CRD" >/dev/null 2>&1; then
    if ! operator_alive; then
      for p in $(kubectl get tracingpolicies -o name); do
        kubectl patch "$p" --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null
      done
    fi
    kubectl delete tracingpolicies --all --wait=true --timeout="${TIMEOUT}s" >/dev/null
  fi
  kubectl delete namespace "$DEMO_NS" --ignore-not-found --wait=true --timeout="${TIMEOUT}s" >/dev/null
  stop_operator
  if helm status "$RELEASE" -n "$SYSTEM_NS" >/dev/null 2>&1; then
    helm uninstall "$RELEASE" -n "$SYSTEM_NS" --wait --timeout "${TIMEOUT}s" >/dev/null
  fi
  kubectl delete namespace "$SYSTEM_NS" --ignore-not-found --wait=true --timeout="${TIMEOUT}s" >/dev/null
  # helm never upgrades CRDs: remove it so the next install brings the current one.
  kubectl delete crd "$CRD" --ignore-not-found --wait=true --timeout="${TIMEOUT}s" >/dev/null
}

down() {
  if ! cluster_reachable; then
    stop_operator
    echo "The cluster is not running; nothing else to remove."
    return
  fi
  remove_demo_objects
  echo "Demo removed. The cluster is still running: 'make cluster-down' stops it."
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

up() {
  local t0=$SECONDS
  mkdir -p "$DEMO_DIR"

  say "1/8 Building tracelight"
  (cd "$REPO" && cargo build --locked --bin tracelight)
  local target_dir=${CARGO_TARGET_DIR:-$REPO/target}
  [[ $target_dir == /* ]] || target_dir=$REPO/$target_dir
  local bin=$target_dir/debug/tracelight
  [[ -x $bin ]] || fail "no binary at $bin after cargo build"

  say "2/8 Starting the control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok nodes)"
  BIN_DIR=$("$REPO/e2e/cluster/build.sh" | tail -n1)
  KUBECONFIG=$("$REPO/e2e/cluster/up.sh" | tail -n1)
  export KUBECONFIG

  if operator_alive || helm status "$RELEASE" -n "$SYSTEM_NS" >/dev/null 2>&1; then
    log "replacing the previous demo (or e2e leftovers)"
  fi
  remove_demo_objects
  port_free "$WEBHOOK_PORT" || fail "port $WEBHOOK_PORT is taken; set TRACELIGHT_DEMO_WEBHOOK_PORT"
  port_free "$ADMIN_PORT" || fail "port $ADMIN_PORT is taken; set TRACELIGHT_DEMO_ADMIN_PORT"

  local url=https://127.0.0.1:$WEBHOOK_PORT/mutate-pods
  say "3/8 helm install $RELEASE (webhook.url=$url: the operator runs on this machine)"
  helm install "$RELEASE" "$REPO/charts/tracelight" -n "$SYSTEM_NS" --create-namespace \
    --set operator.enabled=false --set "webhook.url=$url" >/dev/null

  say "4/8 Starting the operator as ServiceAccount $SYSTEM_NS/tracelight (log: $OP_LOG)"
  local token ca server
  token=$(kubectl create token tracelight -n "$SYSTEM_NS" --duration=24h)
  ca=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
  server=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
  (
    umask 077
    cat >"$OP_KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: demo
  cluster: {server: "$server", certificate-authority-data: "$ca"}
users:
- name: tracelight
  user: {token: "$token"}
contexts:
- name: demo
  context: {cluster: demo, user: tracelight, namespace: $SYSTEM_NS}
current-context: demo
EOF
  )
  # The chart's own operator flags (see `helm get notes $RELEASE -n $SYSTEM_NS`).
  local args=(
    controller --namespace="$SYSTEM_NS"
    --webhook-addr="127.0.0.1:$WEBHOOK_PORT" --admin-addr="127.0.0.1:$ADMIN_PORT"
    --webhook-config=tracelight --service-name=tracelight-webhook
    --cert-mode=self-signed --cert-secret=tracelight-webhook-tls --extra-san=127.0.0.1
    --leader-election=true --lease-name=tracelight-controller --log-format=text
  )
  [[ ! -f $OP_LOG ]] || mv -f "$OP_LOG" "$OP_LOG.prev"
  # Detached in its own session with stdin/stdout/stderr redirected, so make returns.
  KUBECONFIG=$OP_KUBECONFIG POD_NAMESPACE=$SYSTEM_NS POD_NAME=demo-operator NO_COLOR=1 \
    setsid -f bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" "$bin" "${args[@]}" </dev/null >"$OP_LOG" 2>&1
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -s $PID_FILE ]] && break
    sleep 0.1
  done
  operator_alive || fail "the operator did not start"
  wait_for "the operator to be ready (/readyz)" curl -fsS --max-time 2 "http://127.0.0.1:$ADMIN_PORT/readyz"
  local bundle
  bundle=$(kubectl get mutatingwebhookconfiguration tracelight -o jsonpath='{.webhooks[0].clientConfig.caBundle}')
  [[ -n $bundle ]] || fail "the operator is ready but the webhook configuration has no caBundle"

  say "5/8 Applying config/samples/ (the minimal policy first, so it is the oldest and governs '$DEMO_NS')"
  # The complete sample points at a collector CA and an API key in $SYSTEM_NS: demo stand-ins.
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=demo-collector-ca \
    -keyout /dev/null -out "$DEMO_DIR/collector-ca.crt" 2>/dev/null
  kubectl -n "$SYSTEM_NS" create secret generic collector-ca --from-file=ca.crt="$DEMO_DIR/collector-ca.crt" >/dev/null
  kubectl -n "$SYSTEM_NS" create secret generic vendor-api-key --from-literal=api-key=demo-not-a-real-key >/dev/null
  kubectl apply -f "$REPO/config/samples/tracingpolicy.yaml"
  # Different creation seconds make the age order unambiguous.
  sleep 1.1
  kubectl apply -f "$REPO/config/samples/"

  say "6/8 Opting namespace '$DEMO_NS' in and deploying '$APP' there"
  kubectl create namespace "$DEMO_NS" >/dev/null
  kubectl label namespace "$DEMO_NS" tracelight.io/enabled=true >/dev/null
  state() { kubectl get tracingpolicy default -o jsonpath="{.status.namespaces[?(@.name==\"$DEMO_NS\")].state}"; }
  active() { [[ $(state) == Active ]]; }
  wait_for "policy 'default' to activate namespace '$DEMO_NS'" active
  kubectl -n "$DEMO_NS" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $APP
spec:
  replicas: 2
  selector:
    matchLabels: {app: $APP}
  template:
    metadata:
      labels: {app: $APP}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: app
          image: registry.example/shop/checkout:1.0
          ports: [{containerPort: 8080}]
EOF
  kubectl -n "$DEMO_NS" rollout status "deployment/$APP" --timeout="${TIMEOUT}s" >/dev/null ||
    fail "deployment $APP did not become ready"

  say "7/8 Checking an injected pod"
  injected_count() { [[ $(kubectl get tracingpolicy default -o jsonpath="{.status.namespaces[?(@.name==\"$DEMO_NS\")].counts.injected}") == 2 ]]; }
  wait_for "policy 'default' to count the 2 injected pods of '$APP'" injected_count
  local pod init svc endpoint injected policy
  pod=$(kubectl -n "$DEMO_NS" get pods -l "app=$APP" -o jsonpath='{.items[0].metadata.name}')
  [[ -n $pod ]] || fail "no pod of $APP"
  init=$(kubectl -n "$DEMO_NS" get pod "$pod" -o jsonpath='{.spec.initContainers[0].name}/{.spec.initContainers[0].restartPolicy}')
  svc=$(kubectl -n "$DEMO_NS" get pod "$pod" -o jsonpath='{.spec.containers[0].env[?(@.name=="OTEL_SERVICE_NAME")].value}')
  endpoint=$(kubectl -n "$DEMO_NS" get pod "$pod" -o jsonpath='{.spec.containers[0].env[?(@.name=="OTEL_EXPORTER_OTLP_ENDPOINT")].value}')
  injected=$(kubectl -n "$DEMO_NS" get pod "$pod" -o jsonpath='{.metadata.labels.tracelight\.io/injected}')
  policy=$(kubectl -n "$DEMO_NS" get pod "$pod" -o jsonpath='{.metadata.annotations.tracelight\.io/policy}')
  [[ $init == tracelight-agent/Always ]] || fail "pod $pod: first init container is '$init', expected the agent sidecar"
  [[ $svc == "$APP" ]] || fail "pod $pod: OTEL_SERVICE_NAME is '$svc', expected '$APP'"
  [[ $endpoint == http://127.0.0.1:4318 ]] || fail "pod $pod: OTEL_EXPORTER_OTLP_ENDPOINT is '$endpoint'"
  [[ $injected == true && $policy == default ]] || fail "pod $pod: injected label '$injected', policy '$policy'"
  local phase overlap
  phase=$(kubectl -n "$DEMO_NS" get pod "$pod" -o jsonpath='{.status.phase}')
  overlap=$(kubectl get tracingpolicy production -o jsonpath='{.status.conditions[?(@.reason=="Overlap")].message}' 2>/dev/null) || overlap=

  say "8/8 A request becomes a trace: the shop's inventory service (Rust SDK) in '$DEMO_NS', run on this host"
  # kwok nodes run no container: the pod runner runs the injected pod here, exactly as the API
  # server stored it, in its own network namespace (root), and a real OpenTelemetry Collector
  # receives what its agent exports (e2e/traces/demo.rs).
  [[ $(id -u) == 0 ]] || fail "step 8 runs the pod in a network namespace and needs root: run 'make demo' as root"
  local otelcol trace_log=$DEMO_DIR/trace.log
  otelcol=$("$REPO/e2e/collector/build.sh" | tail -n1) || fail "building the OpenTelemetry Collector failed"
  (cd "$REPO" && cargo build --locked -p tracelight-agent --bin tracelight-agent &&
    cargo build --locked --example shop-inventory &&
    cargo test --locked --features e2e --test traces --no-run) >"$trace_log" 2>&1 ||
    fail "building the agent, the inventory service or the pod runner failed (see $trace_log)"
  if ! (cd "$REPO" && TRACELIGHT_OTELCOL=$otelcol TRACELIGHT_DEMO_NAMESPACE=$DEMO_NS \
    TRACELIGHT_DEMO_WEBHOOK_PORT=$WEBHOOK_PORT cargo test --locked --quiet --features e2e --test traces \
    demo:: -- --ignored --nocapture --test-threads=1) >>"$trace_log" 2>&1; then
    tail -n 40 "$trace_log" >&2
    fail "no trace from the demo's pod (log: $trace_log)"
  fi
  # What the test printed: the deployment, the collector, the trace tree and its resource.
  sed -n '/^deployed /,/^test result/p' "$trace_log" | grep -v -e '^test ' -e '^$' -e '^running ' -e '^\.$' -e '^\[traces\]' || true

  local k="kubectl"
  cat <<EOF

Tracelight demo is up ($((SECONDS - t0))s). Checked just now:
  - the operator (pid $(operator_pid)) runs as ServiceAccount $SYSTEM_NS/tracelight and serves the
    webhook at $url; the API server trusts it through the caBundle it published;
  - policy 'default' marks namespace '$DEMO_NS' Active;
  - pod $DEMO_NS/$pod ($phase on a kwok node; no container really runs) has the agent
    'tracelight-agent' as a native sidecar (first init container, restartPolicy Always),
    OTEL_SERVICE_NAME=$svc (from its Deployment) and OTEL_EXPORTER_OTLP_ENDPOINT=$endpoint,
    the label tracelight.io/injected=true and the annotation tracelight.io/policy=default;
  - a request to the injected inventory pod, run on this host, became the trace printed above in
    a real OpenTelemetry Collector (its own SDK -> the injected env -> the agent -> the collector).

Look for yourself:
  export KUBECONFIG=$KUBECONFIG PATH=$BIN_DIR:\$PATH
  $k get tracingpolicies
  $k describe tracingpolicy default
  $k -n $DEMO_NS get pod $pod -o jsonpath='{range .spec.initContainers[*]}init: {.name}{"\n"}{end}{range .spec.containers[*]}container: {.name}{"\n"}{end}'
  $k -n $DEMO_NS set env pod/$pod -c app --list
  $k -n $DEMO_NS get pod $pod -o yaml
  $bin inject --policy config/samples/tracingpolicy.yaml -f your-deployment.yaml   # offline preview
  operator log: $OP_LOG

Now:
EOF
  echo "\$ kubectl get tracingpolicies"
  kubectl get tracingpolicies
  echo "  (INJECTED follows the pods within seconds. REPORTING and SILENT count the agents that report: on kwok nodes no container runs, so only the inventory pod of step 8, run on this host, had one.)"
  if [[ $overlap == *"$DEMO_NS"* ]]; then
    echo "  production (the complete sample) selects '$DEMO_NS' too; its Degraded condition says: $overlap"
  fi
  echo
  echo "\$ kubectl -n $DEMO_NS get pod $pod -o jsonpath='...'    # containers"
  kubectl -n "$DEMO_NS" get pod "$pod" -o jsonpath='{range .spec.initContainers[*]}init container: {.name}{"\n"}{end}{range .spec.containers[*]}container:      {.name}{"\n"}{end}'
  echo
  echo "\$ kubectl -n $DEMO_NS set env pod/$pod -c app --list    # the app container's env"
  kubectl -n "$DEMO_NS" set env "pod/$pod" -c app --list
  cat <<EOF

Tear down: make demo-down   (stops the operator, removes the release, policies and namespaces;
           make cluster-down then stops the cluster)
EOF
}

case ${1:-up} in
  up) up ;;
  down) down ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
  *) die "unknown command '$1' (up or down; see --help)" ;;
esac
