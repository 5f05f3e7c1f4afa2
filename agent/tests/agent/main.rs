//! In-process integration tests of `tracelight-agent`: real OpenTelemetry SDK in, the agent's
//! own receivers (or a scripted fake collector) out, all on 127.0.0.1 random ports.

mod abuse;
mod admin_exposure;
mod collector;
mod faults;
mod grpc_faults;
mod grpc_input;
mod receiver;
mod reload;
mod report;
mod sampling_rules;
mod sdk;
mod support;
mod tls;
