#!/usr/bin/env bash
# Usage: e2e/alerts/build.sh [--force] [promtool|crds]
#
# promtool (default): builds Prometheus's real `promtool` from the Go module pinned in
#   e2e/alerts/promtool/go.mod, and next to it `metriccheck` (e2e/alerts/promtool/metriccheck:
#   the metric names and label values of rules and dashboards against the code's /metrics, with
#   Prometheus's own PromQL parser), into
#     ${TRACELIGHT_CACHE:-$HOME/.cache/tracelight}/bin/promtool-<version>/
#   (override the directory with TRACELIGHT_PROMTOOL_DIR) and prints that directory on the last
#   line.
#   A stamp (hash of go.mod, go.sum, flags and Go version) skips the build when nothing changed,
#   so a warm run is instant. A cold build takes several minutes on 2 cores.
# crds: takes the Prometheus Operator CRDs (ServiceMonitor, PodMonitor, PrometheusRule) from the
#   prometheus-operator Go module (its example/prometheus-operator-crd/ directory, version
#   $PROMETHEUS_OPERATOR_VERSION, default below) through the module proxy, copies them into
#     ${TRACELIGHT_CACHE:-$HOME/.cache/tracelight}/monitoring-crds/<version>/
#   and prints that directory on the last line.
# Progress goes to stderr. Builds hold a lock, so concurrent callers wait for one build.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${TRACELIGHT_CACHE:-$HOME/.cache/tracelight}
PROMETHEUS_OPERATOR_VERSION=${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}
CRDS=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_podmonitors.yaml
  monitoring.coreos.com_prometheusrules.yaml)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

force=false
what=promtool
for arg in "$@"; do
  case $arg in
    --force) force=true ;;
    promtool | crds) what=$arg ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$arg' (see --help)" ;;
  esac
done

command -v go >/dev/null 2>&1 || die "the Go toolchain ('go') is not on PATH; install Go >= 1.26"
# Never let the go command fetch another toolchain behind our back.
export GOTOOLCHAIN=local

lock() {
  mkdir -p "$1"
  exec 9>"$1/.build.lock"
  flock 9 || die "cannot lock $1/.build.lock"
}

if [[ $what == crds ]]; then
  out="$CACHE/monitoring-crds/$PROMETHEUS_OPERATOR_VERSION"
  lock "$out"
  have=true
  for f in "${CRDS[@]}"; do [[ -s $out/$f ]] || have=false; done
  if $force || ! $have; then
    log "prometheus-operator CRDs: downloading github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION"
    module=github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION
    (cd "$HERE" && go mod download "$module") >&2 || die "go mod download $module failed"
    # The module path has no upper-case letters, so its cache directory is the path itself.
    dir=$(go env GOMODCACHE)/$module
    [[ -n $dir && -d $dir/example/prometheus-operator-crd ]] ||
      die "prometheus-operator@$PROMETHEUS_OPERATOR_VERSION has no example/prometheus-operator-crd/ (module dir '$dir')"
    for f in "${CRDS[@]}"; do
      [[ -s $dir/example/prometheus-operator-crd/$f ]] || die "$f missing in $dir/example/prometheus-operator-crd"
      install -m 0644 "$dir/example/prometheus-operator-crd/$f" "$out/$f"
    done
  fi
  echo "$out"
  exit 0
fi

src="$HERE/promtool"
# The version go.mod requires (a `require` line or an entry of a require block).
version=$(awk '$1 == "require" && $2 == "github.com/prometheus/prometheus" { print $3; exit }
  $1 == "github.com/prometheus/prometheus" && $2 ~ /^v/ { print $2; exit }' "$src/go.mod")
[[ -n $version ]] || die "cannot read the prometheus version from $src/go.mod"
out_dir=${TRACELIGHT_PROMTOOL_DIR:-$CACHE/bin/promtool-$version}
jobs=${TRACELIGHT_BUILD_JOBS:-2}
ldflags="-s -w -X github.com/prometheus/common/version.Version=$version -X github.com/prometheus/common/version.Branch=module"
stamp=$({
  echo "promtool-recipe-v1 $(go env GOVERSION GOOS GOARCH | tr '\n' ' ') $ldflags"
  cat "$src/go.mod" "$src/go.sum" "$src"/metriccheck/*.go
} | sha256sum | cut -d' ' -f1)

lock "$out_dir"
if ! $force && [[ -x $out_dir/promtool && -x $out_dir/metriccheck && -f $out_dir/.stamp &&
  $(<"$out_dir/.stamp") == "$stamp" ]]; then
  echo "$out_dir"
  exit 0
fi
log "promtool: building github.com/prometheus/prometheus/cmd/promtool@$version with $(go env GOVERSION) -p $jobs (a cold build takes several minutes)"
start=$(date +%s)
rm -f "$out_dir/.stamp"
(cd "$src" && go build -p "$jobs" -trimpath -buildvcs=false -ldflags "$ldflags" -o "$out_dir/promtool.tmp" \
  github.com/prometheus/prometheus/cmd/promtool) >&2 || die "promtool: go build failed (see the output above)"
(cd "$src" && go build -p "$jobs" -trimpath -buildvcs=false -ldflags "-s -w" -o "$out_dir/metriccheck.tmp" \
  ./metriccheck) >&2 || die "metriccheck: go build failed (see the output above)"
mv -f "$out_dir/promtool.tmp" "$out_dir/promtool"
mv -f "$out_dir/metriccheck.tmp" "$out_dir/metriccheck"
echo "$stamp" >"$out_dir/.stamp"
log "promtool: built in $(($(date +%s) - start))s"
echo "$out_dir"
