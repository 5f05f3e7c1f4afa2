#!/usr/bin/env bash
# Usage: e2e/alerts/test.sh   (`make test-alerts`)
#
# Tests the chart's alerting with the real tools:
#   1. renders the chart with `helm template` (helm from e2e/cluster/build.sh) with every
#      monitoring value on, and checks the default render has no monitoring object and that
#      enabling one without the monitoring.coreos.com/v1 API fails with a clear message;
#   2. `promtool check rules` on the PrometheusRule's rules (promtool built from the Prometheus Go
#      module by e2e/alerts/build.sh);
#   3. `promtool test rules` with the unit tests in e2e/alerts/tests/;
#   4. metriccheck: every metric name and label value a rule or a dashboard panel uses is one the
#      code exports, read from the /metrics texts the operator's and the agent's own registries
#      render (the `exposition_for_the_alert_checks` tests);
#   5. the per-workload regression rules the operator renders against a baseline: promtool check
#      rules, promtool test rules (tests/baseline.test.yaml) and metriccheck;
#   6. that each check fails on a bad input (e2e/alerts/testdata/).
# Prints `test-alerts: N passed, M failed` last; exits 1 when anything failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CARGO=${CARGO:-cargo}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }

tools=$("$HERE/build.sh" | tail -n1)
promtool=$tools/promtool
metriccheck=$tools/metriccheck
helm=$("$REPO/e2e/cluster/build.sh" helm | tail -n1)/helm
"$promtool" --version 2>&1 | head -n1

# 1. Render.
chart=$REPO/charts/tracelight
on=(--set monitoring.serviceMonitor.enabled=true --set monitoring.podMonitor.enabled=true
  --set monitoring.prometheusRule.enabled=true --set monitoring.grafanaDashboard.enabled=true)
"$helm" template tl "$chart" -n tracelight-system --api-versions monitoring.coreos.com/v1 "${on[@]}" >"$work/all.yaml"
kinds=$(grep -E '^kind: (ServiceMonitor|PodMonitor|PrometheusRule)$' "$work/all.yaml" | sort | tr '\n' ' ')
if [[ $kinds == "kind: PodMonitor kind: PrometheusRule kind: ServiceMonitor " ]] &&
  grep -q '^    grafana_dashboard: "1"$' "$work/all.yaml"; then
  ok "chart renders the ServiceMonitor, PodMonitor, PrometheusRule and dashboard ConfigMap"
else
  bad "chart render with monitoring on: got kinds '$kinds'"
fi
if "$helm" template tl "$chart" -n tracelight-system --api-versions monitoring.coreos.com/v1 |
  grep -qE '^kind: (ServiceMonitor|PodMonitor|PrometheusRule)$|grafana_dashboard'; then
  bad "the default render has monitoring objects"
else
  ok "the default render has no monitoring object"
fi
if out=$("$helm" template tl "$chart" -n tracelight-system --set monitoring.prometheusRule.enabled=true 2>&1); then
  bad "monitoring.prometheusRule.enabled without the monitoring.coreos.com/v1 API rendered"
elif grep -q 'needs the Prometheus Operator CRDs' <<<"$out"; then
  ok "enabling the PrometheusRule without its API fails clearly"
else
  bad "enabling the PrometheusRule without its API failed unclearly: $out"
fi

# The PrometheusRule's spec is a rules file; the ConfigMap's tracelight.json the dashboard.
show() {
  "$helm" template tl "$chart" -n tracelight-system --api-versions monitoring.coreos.com/v1 "${on[@]}" --show-only "$1"
}
show templates/prometheusrule.yaml | sed -n '/^spec:$/,$p' | sed '1d; s/^  //' >"$work/rules.yaml"
show templates/grafana-dashboard.yaml | sed -n '/^  tracelight.json: |-$/,$p' | sed '1d; s/^    //' >"$work/dashboard.json"

# 2. promtool check rules.
if "$promtool" check rules "$work/rules.yaml"; then
  ok "promtool check rules"
else
  bad "promtool check rules"
fi

# 3. promtool test rules.
tests=()
for f in "$HERE"/tests/*.yaml; do
  # The operator's own rules are rendered by the code below (step 5).
  [[ ${f##*/} == baseline.test.yaml ]] && continue
  cp "$f" "$work/"
  tests+=("${f##*/}")
done
if (cd "$work" && "$promtool" test rules "${tests[@]}"); then
  ok "promtool test rules (${tests[*]})"
else
  bad "promtool test rules"
fi

# 4. Metric names and label values against the code's own /metrics.
export TRACELIGHT_METRICS_DUMP=$work
(cd "$REPO" && "$CARGO" test --locked -q -p tracelight --lib exposition_for_the_alert_checks &&
  "$CARGO" test --locked -q -p tracelight-agent --test metrics_exposition) >"$work/cargo.log" 2>&1 ||
  { cat "$work/cargo.log"; bad "rendering the code's /metrics"; }
external=container_cpu_usage_seconds_total,container_memory_working_set_bytes
check() { "$metriccheck" -exposition "$work/operator.txt" -exposition "$work/agent.txt" -external "$external" "$@"; }
if [[ -s $work/operator.txt && -s $work/agent.txt ]]; then
  if check -rules "$work/rules.yaml" -dashboard "$work/dashboard.json"; then
    ok "every metric and label value of the rules and the dashboard is exported"
  else
    bad "rules or dashboard use metrics the code does not export"
  fi
else
  bad "no /metrics text from the code's registries"
fi

# 5. The regression rules the operator renders (written by the test
#    exposition_for_the_alert_checks_baseline_rules above).
if [[ -s $work/baseline-rules.yaml ]]; then
  if "$promtool" check rules "$work/baseline-rules.yaml"; then
    ok "promtool check rules (the operator's regression rules)"
  else
    bad "promtool check rules (the operator's regression rules)"
  fi
  cp "$HERE/tests/baseline.test.yaml" "$work/"
  if (cd "$work" && "$promtool" test rules baseline.test.yaml); then
    ok "promtool test rules (baseline.test.yaml)"
  else
    bad "promtool test rules (baseline.test.yaml)"
  fi
  if check -rules "$work/baseline-rules.yaml"; then
    ok "every metric and label value of the operator's regression rules is exported"
  else
    bad "the operator's regression rules use metrics the agent does not export"
  fi
else
  bad "no regression rules rendered by the operator's code"
fi

# 6. Each check fails on a bad input.
if check -rules "$HERE/testdata/bad.rules.yaml" >"$work/bad.out" 2>&1; then
  bad "metriccheck passed a misspelled metric and a wrong label value"
elif [[ $(grep -c '^FAIL' "$work/bad.out") -eq 2 ]]; then
  ok "metriccheck catches a misspelled metric and a wrong label value"
else
  cat "$work/bad.out"
  bad "metriccheck on testdata/bad.rules.yaml: expected 2 problems"
fi
if "$promtool" check rules "$HERE/testdata/broken.rules.yaml" >/dev/null 2>&1; then
  bad "promtool check rules passed invalid PromQL"
else
  ok "promtool check rules refuses invalid PromQL"
fi
cp "$HERE/testdata/wrong.test.yaml" "$work/"
if (cd "$work" && "$promtool" test rules wrong.test.yaml >/dev/null 2>&1); then
  bad "promtool test rules passed a wrong expectation"
else
  ok "promtool test rules fails on a wrong expectation"
fi

echo "test-alerts: $passed passed, $failed failed"
((failed == 0))
