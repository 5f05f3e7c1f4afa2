//! Support for the end-to-end suite: the cluster from `e2e/cluster`, the tools it built (kubectl,
//! helm), the operator as a local process, waits with timeouts, and throwaway namespaces.

pub mod cluster;
pub mod forward;
pub mod objects;
pub mod operator;
pub mod tls;
pub mod wait;

use std::path::PathBuf;
use std::time::Instant;

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the suite keeps its files (kubeconfigs, operator logs); inside the cargo target dir.
pub fn work_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e");
    std::fs::create_dir_all(&dir).expect("creating the e2e work dir");
    dir
}

/// The lock that serializes the suites sharing the local cluster (`e2e`, `traces`, the scale
/// bench), whoever starts them (`make` or `cargo test` directly). Held until dropped.
pub fn cluster_lock() -> std::io::Result<std::fs::File> {
    let dir = match std::env::var_os("TRACELIGHT_CACHE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").ok_or_else(|| std::io::Error::other("HOME is not set"))?)
            .join(".cache/tracelight"),
    };
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("e2e-cluster.lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    if file.try_lock().is_err() {
        eprintln!("[e2e] waiting for {} (another e2e run holds the cluster)", path.display());
        file.lock()?;
    }
    Ok(file)
}

/// Prints step progress with the time since the suite started, so a slow step is visible.
#[derive(Clone)]
pub struct StepLog {
    started: Instant,
}

impl StepLog {
    pub fn new() -> Self {
        StepLog { started: Instant::now() }
    }

    pub fn step(&self, what: &str) {
        eprintln!("\n[e2e {:>6.1}s] == {what}", self.started.elapsed().as_secs_f64());
    }

    pub fn note(&self, what: &str) {
        eprintln!("[e2e {:>6.1}s]    {what}", self.started.elapsed().as_secs_f64());
    }

    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for a test on one machine).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// A short random suffix for object names.
pub fn suffix() -> String {
    format!("{:04x}", fastrand::u16(..))
}
