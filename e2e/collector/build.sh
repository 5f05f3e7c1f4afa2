#!/usr/bin/env bash
# Builds a real OpenTelemetry Collector with the official builder (ocb) from Go modules:
# OTLP receiver, batch + probabilistic sampler processors, file + OTLP exporters.
# The binary is cached in $TRACELIGHT_CACHE/bin/ (default $HOME/.cache/tracelight/bin/); prints its path on the last line.
set -euo pipefail

VERSION="${OTELCOL_VERSION:-0.165.0}"
BIN_DIR="${TRACELIGHT_BIN_DIR:-${TRACELIGHT_CACHE:-$HOME/.cache/tracelight}/bin}"
OUT="$BIN_DIR/otelcol-tracelight-$VERSION"

if [[ -x "$OUT" ]]; then
  echo "$OUT"
  exit 0
fi
command -v go >/dev/null || { echo "error: go is required to build the collector" >&2; exit 1; }

mkdir -p "$BIN_DIR"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "building the builder v$VERSION" >&2
GOBIN="$WORK/bin" go install "go.opentelemetry.io/collector/cmd/builder@v$VERSION"

cat > "$WORK/manifest.yaml" <<YAML
dist:
  name: otelcol-tracelight
  description: OpenTelemetry Collector for Tracelight interop tests and benchmarks
  output_path: $WORK/dist
receivers:
  - gomod: go.opentelemetry.io/collector/receiver/otlpreceiver v$VERSION
processors:
  - gomod: go.opentelemetry.io/collector/processor/batchprocessor v$VERSION
  - gomod: github.com/open-telemetry/opentelemetry-collector-contrib/processor/probabilisticsamplerprocessor v$VERSION
exporters:
  - gomod: github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter v$VERSION
  - gomod: go.opentelemetry.io/collector/exporter/otlpexporter v$VERSION
  - gomod: go.opentelemetry.io/collector/exporter/otlphttpexporter v$VERSION
YAML

echo "generating the collector sources" >&2
"$WORK/bin/builder" --config "$WORK/manifest.yaml" --skip-compilation --skip-get-modules >&2
cd "$WORK/dist"
# With --skip-get-modules the builder writes no go.mod: pin the components at $VERSION here and let
# tidy resolve the rest.
{
  echo "module otelcol-tracelight"
  echo
  echo "go 1.25"
  echo
  echo "require ("
  grep -E '^\s+- gomod:' "$WORK/manifest.yaml" | sed -E 's/^\s+- gomod: /\t/'
  printf '\tgo.opentelemetry.io/collector/otelcol v%s\n' "$VERSION"
  echo ")"
} > go.mod
# `go mod tidy -e`: the builder's plain tidy also resolves the test-only imports of every
# component, some of which the module proxy may not serve; the build itself does not need them.
go mod tidy -e >&2
echo "compiling the collector (a few minutes on 2 cores)" >&2
# -p limits parallel compile jobs: the machine is shared.
go build -p "${GO_BUILD_JOBS:-2}" -trimpath -ldflags "-s -w" -o otelcol-tracelight . >&2
install -m 0755 otelcol-tracelight "$OUT"
echo "$OUT"
