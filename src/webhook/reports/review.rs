//! Who sent a report: the API server's TokenReview of the bearer token, which must carry the
//! report audience and be bound to a pod. Reviews are cached per token (by hash) for a short
//! time, so a thousand agents pushing every 30 s cost a few reviews a minute each, not a request
//! per push.

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracelight_contract::report::REPORT_AUDIENCE;

/// Extra fields the API server adds to the user info of a pod-bound ServiceAccount token.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// How long an accepted token is trusted without a new review, at most (and never past its `exp`).
/// A bound token stops being valid when its pod is deleted; trusting it a little longer is
/// harmless, as reports of pods that no longer exist are ignored.
const CACHE_FOR: Duration = Duration::from_secs(600);
/// Most cached reviews; beyond it the cache is cleared (a flood of distinct tokens).
const CACHE_MAX: usize = 20_000;

/// The pod a token was issued for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewedPod {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("token rejected: {0}")]
    Rejected(String),
    #[error("the token is not a pod-bound ServiceAccount token: {0}")]
    NotAPodToken(&'static str),
    #[error("TokenReview failed: {0}")]
    Api(#[from] kube::Error),
}

/// Reviews bearer tokens. A trait so the report handler can be tested without an API server.
pub trait Reviewer: Send + Sync {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<ReviewedPod, ReviewError>>;
}

/// The pod a successful review names, if the review says the token is valid for `audience`.
pub fn reviewed_pod(status: &TokenReviewStatus, audience: &str) -> Result<ReviewedPod, ReviewError> {
    if status.authenticated != Some(true) {
        let why = status.error.clone().filter(|e| !e.is_empty()).unwrap_or_else(|| "not authenticated".into());
        return Err(ReviewError::Rejected(why));
    }
    if !status.audiences.iter().flatten().any(|a| a == audience) {
        return Err(ReviewError::Rejected(format!("audience is not {audience}")));
    }
    let user = status.user.as_ref().ok_or(ReviewError::NotAPodToken("no user"))?;
    let username = user.username.as_deref().unwrap_or_default();
    let (namespace, service_account) = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .ok_or(ReviewError::NotAPodToken("not a ServiceAccount"))?;
    let extra = |key: &str| user.extra.as_ref()?.get(key)?.first().filter(|v| !v.is_empty()).cloned();
    Ok(ReviewedPod {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        pod_name: extra(POD_NAME_EXTRA).ok_or(ReviewError::NotAPodToken("not bound to a pod"))?,
        pod_uid: extra(POD_UID_EXTRA).ok_or(ReviewError::NotAPodToken("not bound to a pod"))?,
    })
}

/// Reviews tokens with the API server's TokenReview, caching accepted ones.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    /// Accepted tokens (by hash): the pod, and until when the review holds.
    cache: Mutex<HashMap<[u8; 32], (ReviewedPod, Instant)>>,
}

/// The `exp` claim of a JWT (seconds since the epoch), read without verifying the signature:
/// only used to bound how long a review that succeeded is reused.
pub fn token_expiry(token: &str) -> Option<i64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?.get("exp")?.as_i64()
}

/// Until when a review of `token` may be reused, from `now` (an instant) and the wall clock.
fn cache_deadline(token: &str, now: Instant, unix_now: i64) -> Instant {
    let left = token_expiry(token).map(|exp| Duration::from_secs(u64::try_from(exp - unix_now).unwrap_or(0)));
    now + left.map_or(CACHE_FOR, |left| left.min(CACHE_FOR))
}

impl TokenReviewer {
    pub fn new(client: kube::Client) -> TokenReviewer {
        TokenReviewer { api: Api::all(client), cache: Mutex::default() }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<ReviewedPod> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(key).filter(|(_, until)| Instant::now() < *until).map(|(pod, _)| pod.clone())
    }

    fn remember(&self, key: [u8; 32], pod: &ReviewedPod, until: Instant) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            let now = Instant::now();
            cache.retain(|_, (_, until)| now < *until);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (pod.clone(), until));
    }

    async fn review_uncached(&self, token: &str) -> Result<ReviewedPod, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_string(), audiences: Some(vec![REPORT_AUDIENCE.into()]) },
            ..Default::default()
        };
        let reviewed = self.api.create(&PostParams::default(), &review).await?;
        reviewed_pod(&reviewed.status.unwrap_or_default(), REPORT_AUDIENCE)
    }
}

impl Reviewer for TokenReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<ReviewedPod, ReviewError>> {
        Box::pin(async move {
            let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if let Some(pod) = self.cached(&key) {
                return Ok(pod);
            }
            let pod = self.review_uncached(token).await?;
            let unix_now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            self.remember(key, &pod, cache_deadline(token, Instant::now(), unix_now));
            Ok(pod)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::collections::BTreeMap;

    fn status(username: &str, audiences: &[&str], pod: Option<(&str, &str)>) -> TokenReviewStatus {
        let extra = pod.map(|(name, uid)| {
            BTreeMap::from([
                (POD_NAME_EXTRA.to_string(), vec![name.to_string()]),
                (POD_UID_EXTRA.to_string(), vec![uid.to_string()]),
            ])
        });
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo { username: Some(username.into()), extra, ..Default::default() }),
            error: None,
        }
    }

    #[test]
    fn reviews_are_reused_until_the_token_expires_or_ten_minutes() {
        use base64::Engine;
        let jwt = |claims: &str| {
            let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
            format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(claims))
        };
        assert_eq!(token_expiry(&jwt(r#"{"exp":1800000600,"aud":["x"]}"#)), Some(1_800_000_600));
        assert_eq!(token_expiry("not-a-jwt"), None);
        assert_eq!(token_expiry(&jwt("not json")), None);
        let now = Instant::now();
        let unix = 1_800_000_000;
        assert_eq!(cache_deadline(&jwt(r#"{"exp":1800000060}"#), now, unix), now + Duration::from_secs(60));
        assert_eq!(cache_deadline(&jwt(r#"{"exp":1800086400}"#), now, unix), now + CACHE_FOR);
        assert_eq!(cache_deadline(&jwt(r#"{"exp":1700000000}"#), now, unix), now, "expired: not reused");
        assert_eq!(cache_deadline("opaque", now, unix), now + CACHE_FOR);
    }

    #[test]
    fn a_pod_bound_token_names_its_pod() {
        let s = status("system:serviceaccount:shop:default", &[REPORT_AUDIENCE], Some(("web-1", "u-1")));
        let pod = reviewed_pod(&s, REPORT_AUDIENCE).unwrap();
        assert_eq!(
            pod,
            ReviewedPod {
                namespace: "shop".into(),
                service_account: "default".into(),
                pod_name: "web-1".into(),
                pod_uid: "u-1".into()
            }
        );
    }

    #[test]
    fn tokens_that_are_not_agent_report_tokens_are_refused() {
        let unauthenticated =
            TokenReviewStatus { authenticated: Some(false), error: Some("token expired".into()), ..Default::default() };
        let cases = [
            (unauthenticated, "expired"),
            (
                status("system:serviceaccount:shop:default", &["https://kubernetes.default.svc"], Some(("w", "u"))),
                "audience",
            ),
            (status("alice", &[REPORT_AUDIENCE], Some(("w", "u"))), "ServiceAccount"),
            (status("system:serviceaccount:shop:default", &[REPORT_AUDIENCE], None), "bound to a pod"),
        ];
        for (s, why) in cases {
            let err = reviewed_pod(&s, REPORT_AUDIENCE).unwrap_err().to_string();
            assert!(err.contains(why), "{err} should mention {why}");
        }
    }
}
