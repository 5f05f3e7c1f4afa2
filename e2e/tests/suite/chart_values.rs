//! Bad chart values fail at `helm template`/`helm install` time, through values.schema.json, with
//! a message naming the value.

use crate::support::cluster::Cluster;
use crate::support::repo_root;
use anyhow::{bail, ensure};

pub async fn rejected_by_schema(cluster: &Cluster) -> anyhow::Result<()> {
    let chart = repo_root().join("charts/tracelight").display().to_string();
    // A valid URL-mode rendering first, so the rejections below cannot come from something else.
    let ok =
        cluster.helm_output(["template", "t", &chart, "--set", "webhook.url=https://127.0.0.1:8443/mutate-pods"])?;
    ensure!(ok.status.success(), "valid values were rejected: {}", String::from_utf8_lossy(&ok.stderr));

    let cases: [(&str, &[&str]); 8] = [
        ("certificates.mode=bogus", &["certificates", "mode", "self-signed"]),
        ("telemetry.samplingRatio=1.5", &["telemetry", "samplingRatio"]),
        ("telemetry.otlpEndpoint=collector:4317", &["telemetry", "otlpEndpoint"]),
        ("webhook.timeoutSeconds=99", &["webhook", "timeoutSeconds", "30"]),
        ("webhook.url=http://127.0.0.1:8443/mutate-pods", &["webhook", "url"]),
        ("replicas=0", &["replicas"]),
        ("agent.adminExposure=everything", &["agent", "adminExposure", "metrics"]),
        ("agent.hostPortRange=20000:22999", &["agent", "hostPortRange"]),
    ];
    for (value, expected) in cases {
        let out = cluster.helm_output(["template", "t", &chart, "--set", value])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "helm template accepted {value}");
        ensure!(stderr.contains("schema"), "helm template rejected {value}, but not by the schema: {stderr}");
        for needle in expected {
            ensure!(stderr.contains(needle), "the rejection of {value} does not mention {needle:?}: {stderr}");
        }
        eprintln!("[e2e]    helm template --set {value}: rejected: {}", stderr.trim().replace('\n', " "));
    }

    // helm install checks the same schema before creating the release: none is left. (helm
    // installs a chart's crds/ before it validates values, hence --skip-crds: this test runs
    // beside the cluster suite, which manages the CRD.)
    let release = "e2e-bad-values";
    let args = ["install", release, &chart, "-n", "default", "--skip-crds", "--set", "certificates.mode=bogus"];
    let out = cluster.helm_output(args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        let _ = cluster.helm_output(["uninstall", release, "-n", "default"]);
        bail!("helm install accepted certificates.mode=bogus");
    }
    ensure!(stderr.contains("certificates") && stderr.contains("mode"), "helm install's rejection: {stderr}");
    let status = cluster.helm_output(["status", release, "-n", "default"])?;
    ensure!(!status.status.success(), "a rejected helm install left release {release} behind");
    eprintln!("[e2e]    helm install --set certificates.mode=bogus: rejected, no release left");
    Ok(())
}
