//! The agent's own CPU time and resident memory, read from `/proc/self` (Linux): reported to
//! the operator (the baseline's overhead per pod, the review's overhead bound) and exposed as
//! Prometheus's standard `process_cpu_seconds_total` and `process_resident_memory_bytes`.
//!
//! CPU comes from `/proc/self/schedstat` (nanoseconds on a CPU), which needs no clock-tick
//! constant; kernels without scheduler statistics fall back to `utime + stime` of
//! `/proc/self/stat` at the USER_HZ of 100 every Linux architecture the agent ships for uses.
//! Memory is `VmRSS` of `/proc/self/status`, already in kB whatever the page size.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tracelight_contract::red::AgentUsage;

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ).
const USER_HZ: f64 = 100.0;

/// The agent's usage now; none where `/proc/self` cannot be read (not Linux, no procfs).
pub fn current() -> Option<AgentUsage> {
    let cpu_seconds = std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| cpu_from_schedstat(&s))
        .or_else(|| std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| cpu_from_stat(&s)))?;
    let rss_bytes = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| rss_from_status(&s))?;
    Some(AgentUsage { cpu_seconds, rss_bytes })
}

/// The first field of `schedstat`: time spent on a CPU, in nanoseconds.
pub fn cpu_from_schedstat(text: &str) -> Option<f64> {
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

/// `utime + stime` (fields 14 and 15) of `stat`, in seconds. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last `)`.
pub fn cpu_from_stat(text: &str) -> Option<f64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 3 is the first after `)`
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// `VmRSS` of `status`, in bytes.
pub fn rss_from_status(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line["VmRSS:".len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// `process_cpu_seconds_total` and `process_resident_memory_bytes`, read at each scrape.
#[derive(Debug)]
pub struct UsageCollector;

impl Collector for UsageCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(usage) = current() else { return Ok(()) };
        let cpu = ConstCounter::new(usage.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let rss = ConstGauge::new(usage.rss_bytes as i64);
        rss.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            rss.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        assert_eq!(cpu_from_schedstat("2500000000 1000 7\n"), Some(2.5));
        let stat = "42 (tracelight (x) a) S 1 42 42 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 3 0 100 1000 200";
        assert_eq!(cpu_from_stat(stat), Some(2.0));
        assert_eq!(rss_from_status("Name:\tagent\nVmRSS:\t    4608 kB\nThreads: 3\n"), Some(4608 * 1024));
        assert_eq!(cpu_from_schedstat(""), None);
        assert_eq!(rss_from_status("Name: x\n"), None);
    }

    #[test]
    fn this_process_has_usage_on_linux() {
        if cfg!(target_os = "linux") {
            let u = current().expect("procfs");
            assert!(u.rss_bytes > 1 << 20 && u.cpu_seconds > 0.0, "{u:?}");
        }
    }
}
