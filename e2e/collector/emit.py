"""Emit one trace (a parent with two children) with the OpenTelemetry Python SDK over OTLP.

Usage: emit.py grpc|http ENDPOINT SERVICE_NAME
"""
import sys

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor


def exporter(protocol, endpoint):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=endpoint, insecure=True)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(endpoint=endpoint)


def main():
    protocol, endpoint, service = sys.argv[1:4]
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter(protocol, endpoint)))
    tracer = provider.get_tracer("tracelight-interop")
    with tracer.start_as_current_span("py-parent") as parent:
        parent.set_attribute("http.route", "/checkout")
        with tracer.start_as_current_span("py-child-1"):
            pass
        with tracer.start_as_current_span("py-child-2"):
            pass
    provider.shutdown()


if __name__ == "__main__":
    main()
