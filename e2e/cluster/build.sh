#!/usr/bin/env bash
# Usage: e2e/cluster/build.sh [--force] [TOOL...]
#
# Builds the e2e control plane binaries from the Go modules pinned next to
# this script (TOOL is one of: kubernetes etcd kwok helm; default all):
#   kubernetes/ -> kube-apiserver kube-controller-manager kube-scheduler kubectl
#   etcd/       -> etcd
#   kwok/       -> kwok (+ kwok-stages.yaml, kwok's default Stage objects)
#   helm/       -> helm
# into a cache outside the repository, by default
#   ${TRACELIGHT_CACHE:-$HOME/.cache/tracelight}/bin/k8s-<k8s version>/
# (override with TRACELIGHT_BIN_DIR). Each tool has a stamp file holding a hash
# of its go.mod, go.sum, build flags and Go version; a tool whose stamp matches
# is not rebuilt, so a warm run takes seconds. --force rebuilds anyway.
# Progress goes to stderr; the last line on stdout is the bin dir, so
#   BIN=$(e2e/cluster/build.sh)
# works. A cold build compiles Kubernetes and takes a long while (see README).
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

force=false
tools=()
for arg in "$@"; do
  case $arg in
    --force) force=true ;;
    kubernetes | etcd | kwok | helm) tools+=("$arg") ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$arg' (see --help)" ;;
  esac
done
[[ ${#tools[@]} -gt 0 ]] || tools=(kubernetes etcd kwok helm)

command -v go >/dev/null 2>&1 ||
  die "the Go toolchain ('go') is not on PATH; install Go >= 1.26 (the modules in $CLUSTER_SRC need it)"
go_version=$(go env GOVERSION)
if ! [[ $go_version =~ ^go1\.([0-9]+) ]] || ((BASH_REMATCH[1] < 26)); then
  die "Go >= 1.26 is required, found $go_version ($(command -v go))"
fi
# Never let the go command fetch another toolchain behind our back.
export GOTOOLCHAIN=local

mkdir -p "$BIN_DIR"
exec 9>"$BIN_DIR/.build.lock"
flock 9 || die "cannot lock $BIN_DIR/.build.lock"

JOBS=${TRACELIGHT_BUILD_JOBS:-2}

# Flags for each tool. Changing them changes the stamp and forces a rebuild.
k8s_ldflags() {
  local ver=${K8S_VERSION#v} date
  # hack/lib/version.sh sets these in both packages; use the release time of
  # the module as build date so the binaries do not depend on the clock.
  date=$(cd "$CLUSTER_SRC/kubernetes" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)
  local kv
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    for kv in "gitVersion=$K8S_VERSION" "gitMajor=${ver%%.*}" "gitMinor=$(cut -d. -f2 <<<"$ver")" \
      "gitTreeState=archive" "buildDate=$date"; do
      printf -- '-X %s.%s ' "$pkg" "$kv"
    done
  done
}

helm_ldflags() {
  # helm's Makefile stamps its version and the Kubernetes version it assumes
  # for `helm template`/`helm lint` (from its client-go, v0.37 -> 1.37).
  local cgo minor
  cgo=$(cd "$CLUSTER_SRC/helm" && go list -m -f '{{.Version}}' k8s.io/client-go)
  minor=$(cut -d. -f2 <<<"$cgo")
  printf -- '-X helm.sh/helm/v3/internal/version.version=%s ' "$HELM_VERSION"
  printf -- '-X helm.sh/helm/v3/internal/version.gitTreeState=clean '
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    printf -- '-X %s.k8sVersionMajor=1 -X %s.k8sVersionMinor=%s ' "$pkg" "$pkg" "$minor"
  done
}

# outputs TOOL -> the files the tool puts in BIN_DIR.
outputs() {
  case $1 in
    kubernetes) echo kube-apiserver kube-controller-manager kube-scheduler kubectl ;;
    etcd) echo etcd ;;
    kwok) echo kwok kwok-stages.yaml ;;
    helm) echo helm ;;
  esac
}

recipe() {
  case $1 in
    kubernetes) echo "pkgs=cmd/kube-apiserver,cmd/kube-controller-manager,cmd/kube-scheduler,cmd/kubectl ldflags=$(k8s_ldflags)" ;;
    etcd) echo "pkgs=go.etcd.io/etcd/server/v3" ;;
    kwok) echo "pkgs=sigs.k8s.io/kwok/cmd/kwok stages=node-initialize,node-heartbeat-with-lease,pod-ready,pod-complete,pod-delete" ;;
    helm) echo "pkgs=helm.sh/helm/v3/cmd/helm ldflags=$(helm_ldflags)" ;;
  esac
}

stamp_of() {
  local dir="$CLUSTER_SRC/$1"
  {
    echo "recipe-v1 $go_version $(go env GOOS GOARCH | tr '\n' ' ')"
    recipe "$1"
    cat "$dir/go.mod" "$dir/go.sum"
  } | sha256sum | cut -d' ' -f1
}

up_to_date() {
  local f
  [[ -f $BIN_DIR/.stamp-$1 && $(<"$BIN_DIR/.stamp-$1") == "$2" ]] || return 1
  for f in $(outputs "$1"); do [[ -s $BIN_DIR/$f ]] || return 1; done
}

# kwok's binary has no built-in Stages: it needs them in its --config. Take
# the defaults that ship in the kwok module itself (those kwokctl uses) from
# the module cache, so they always match the pinned kwok version.
write_kwok_stages() {
  local out=$1 dir f
  dir=$(cd "$CLUSTER_SRC/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  [[ -d $dir/kustomize/stage ]] || die "kwok module has no kustomize/stage dir at $dir"
  : >"$out"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [[ -f $dir/kustomize/stage/$f ]] || die "kwok stage $f missing in $dir"
    printf -- '---\n# from sigs.k8s.io/kwok@%s kustomize/stage/%s\n' "$KWOK_VERSION" "$f" >>"$out"
    cat "$dir/kustomize/stage/$f" >>"$out"
  done
}

build_tool() {
  local tool=$1 tmp="$BIN_DIR/.tmp-$1" common=(-p "$JOBS" -trimpath -buildvcs=false)
  rm -rf "$tmp" && mkdir -p "$tmp"
  (
    cd "$CLUSTER_SRC/$tool"
    case $tool in
      kubernetes)
        go build "${common[@]}" -ldflags "-s -w $(k8s_ldflags)" -o "$tmp/" \
          k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
          k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl ;;
      etcd) go build "${common[@]}" -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3 ;;
      kwok)
        go build "${common[@]}" -ldflags "-s -w" -o "$tmp/kwok" sigs.k8s.io/kwok/cmd/kwok
        write_kwok_stages "$tmp/kwok-stages.yaml" ;;
      helm) go build "${common[@]}" -ldflags "-s -w $(helm_ldflags)" -o "$tmp/helm" helm.sh/helm/v3/cmd/helm ;;
    esac
  ) >&2
  local f
  for f in $(outputs "$tool"); do mv -f "$tmp/$f" "$BIN_DIR/$f"; done
  rm -rf "$tmp"
}

total_start=$(date +%s)
for tool in "${tools[@]}"; do
  stamp=$(stamp_of "$tool")
  if ! $force && up_to_date "$tool" "$stamp"; then
    log "$tool: up to date ($(outputs "$tool"))"
    continue
  fi
  log "$tool: building $(outputs "$tool") with $go_version -p $JOBS (a cold Kubernetes build takes 15-40 min on 2 cores)"
  start=$(date +%s)
  rm -f "$BIN_DIR/.stamp-$tool"
  build_tool "$tool" || die "$tool: go build failed (see the output above)"
  echo "$stamp" >"$BIN_DIR/.stamp-$tool"
  log "$tool: built in $(($(date +%s) - start))s"
done
cat >"$BIN_DIR/VERSIONS" <<EOF
kubernetes $K8S_VERSION
etcd $ETCD_VERSION
kwok $KWOK_VERSION
helm $HELM_VERSION
go $go_version
EOF
log "all binaries ready in $(($(date +%s) - total_start))s"
echo "$BIN_DIR"
