# syntax=docker/dockerfile:1
# Tracelight: one static-ish binary for the operator (`tracelight controller`) and the agent
# sidecar (`tracelight agent`). Built with the locked dependency set; runs as non-root on a
# distroless base with a read-only root filesystem.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/admission.rs && echo 'fn main() {}' > benches/agent.rs \
    && cargo build --release --locked --bin tracelight || true
COPY src ./src
COPY benches ./benches
COPY crds ./crds
COPY charts/tracelight/crds ./charts/tracelight/crds
COPY config ./config
COPY build.rs ./
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin tracelight \
    && strip target/release/tracelight

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/tracelight /usr/local/bin/tracelight
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tracelight"]
CMD ["controller"]
