#!/usr/bin/env bash
# A virtualenv with the OpenTelemetry Python SDK and both OTLP exporters (from PyPI), cached in
# $TRACELIGHT_CACHE (default $HOME/.cache/tracelight/); prints the venv's python on the last line.
set -euo pipefail
VENV="${TRACELIGHT_PY_VENV:-${TRACELIGHT_CACHE:-$HOME/.cache/tracelight}/py-otel}"
PKGS=(opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc opentelemetry-exporter-otlp-proto-http)
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c "import opentelemetry.exporter.otlp.proto.grpc, opentelemetry.exporter.otlp.proto.http" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "${PKGS[@]}" >&2
fi
echo "$VENV/bin/python"
