//! The webhook never blocks pod creation: with the operator stopped (connection refused) or hung
//! (connection accepted, never answered), pods are created uninjected within the webhook
//! timeout (`failurePolicy: Ignore`). Once the operator is back, injection resumes.

use super::wait_active;
use super::{Suite, WEBHOOK_TIMEOUT_SECONDS};
use crate::support::objects::{assert_injected, assert_untouched, create_pod, wait_injecting, ENABLED};
use anyhow::{ensure, Context as _};
use kube::ResourceExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub async fn pods_are_created_while_the_webhook_is_down(suite: &mut Suite) -> anyhow::Result<()> {
    suite.log.step("fail-open: pods are created while the webhook is down or hung");
    let client = suite.cluster.client.clone();
    let active = suite.active.clone().context("no active namespace set up by an earlier step")?;
    let limit = Duration::from_secs(WEBHOOK_TIMEOUT_SECONDS + 3);

    suite.stop_operator()?;
    suite.log.note("operator stopped (SIGTERM, exit 0)");
    let started = Instant::now();
    let pod = create_pod(&client, &active.namespace, "while-down", &[]).await?;
    let took = started.elapsed();
    assert_untouched(&pod).context("a pod created while the operator was stopped")?;
    ensure!(
        took < limit,
        "creating a pod with the operator stopped took {took:?} (webhook timeout {WEBHOOK_TIMEOUT_SECONDS}s)"
    );
    suite.log.note(&format!("operator stopped: pod created uninjected in {:.2}s", took.as_secs_f64()));

    // A webhook that accepts connections and never answers: the API server gives up after
    // timeoutSeconds and admits the pod.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", suite.webhook_port)).await?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let hung = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    let started = Instant::now();
    let result = create_pod(&client, &active.namespace, "while-hung", &[]).await;
    let took = started.elapsed();
    hung.abort();
    // Wait for the task to go, so its listener is closed before the operator binds the port again.
    let _ = hung.await;
    let pod = result?;
    assert_untouched(&pod).context("a pod created while the webhook hung")?;
    let calls = accepted.load(Ordering::SeqCst);
    ensure!(calls > 0, "the API server never connected to the hung webhook, so its timeout was not exercised");
    ensure!(
        took < limit,
        "creating a pod with a hung webhook took {took:?} (webhook timeout {WEBHOOK_TIMEOUT_SECONDS}s)"
    );
    suite.log.note(&format!(
        "webhook hung ({calls} connection(s) accepted, never answered): pod created uninjected in {:.2}s \
         (timeoutSeconds {WEBHOOK_TIMEOUT_SECONDS})",
        took.as_secs_f64()
    ));
    Ok(())
}

pub async fn injection_resumes_after_restart(suite: &mut Suite) -> anyhow::Result<()> {
    suite.log.step("restart: a new operator process takes the Lease over and injects again");
    let client = suite.cluster.client.clone();
    let active = suite.active.clone().context("no active namespace set up by an earlier step")?;
    suite.start_operator().await?;
    wait_injecting(&client, &active.namespace, Duration::from_secs(30)).await?;
    let pod = create_pod(&client, &active.namespace, "after-restart", &[]).await?;
    assert_injected(&pod, "after-restart", &active.policy)?;
    suite.log.note("pod created after the restart: injected");

    // The controllers run again (the new process leads): a newly labelled namespace is activated.
    let started = Instant::now();
    let labels = [ENABLED, ("e2e.tracelight.io/tier", "traced")];
    let late = suite.namespaces.create("late", &labels).await?;
    wait_active(&client, &active.policy.name_any(), &late).await?;
    suite.log.note(&format!(
        "new namespace {late} activated by the restarted operator in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
