//! The shutdown request both binaries stop on: SIGTERM (what the kubelet sends) or SIGINT.

/// Resolves on the next SIGTERM or SIGINT. Where SIGTERM cannot be watched (not Unix, or the
/// handler cannot be installed), on SIGINT (Ctrl-C) alone. Call it again to wait for another.
pub async fn shutdown_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::time::Duration;

    /// SIGTERM from outside resolves it, and the process lives on (the handler replaced the
    /// default action, which would kill the test binary).
    #[tokio::test]
    async fn sigterm_resolves_it() {
        let waiting = tokio::spawn(shutdown_requested());
        // Let the task install its handler before the signal arrives.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "resolved before any signal");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("not resolved within 5 s of SIGTERM")
            .expect("the waiting task panicked");
    }
}
