// Entry point of the Node.js auto-instrumentation "image", loaded by the injected
// NODE_OPTIONS="--require /otel-auto-instrumentation-nodejs/autoinstrumentation.js".
// Like the upstream operator's image: the OpenTelemetry Node SDK with every auto-instrumentation,
// configured only by the OTEL_* environment (exporter, protocol, endpoint, service name,
// resource attributes, propagators, sampler).
require('@opentelemetry/auto-instrumentations-node/register');
