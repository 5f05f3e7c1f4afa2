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
/// How long a token the API server refused is refused again without asking: a bogus token
/// pushed over and over costs one TokenReview a minute, not one per request.
pub const REFUSED_FOR: Duration = Duration::from_secs(60);
/// Most remembered refusals; beyond it the expired ones go, then all (the rate limits per
/// address bound how fast new ones come).
pub const REFUSED_MAX: usize = 10_000;

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
    /// Refused tokens (by hash): why, and until when the refusal holds.
    refused: Mutex<HashMap<[u8; 32], (Refusal, Instant)>>,
}

/// A refusal worth remembering: what the API server said about the token (never a failure to
/// ask it, which is retried).
#[derive(Clone, Debug)]
enum Refusal {
    Rejected(String),
    NotAPodToken(&'static str),
}

impl Refusal {
    fn of(error: &ReviewError) -> Option<Refusal> {
        match error {
            ReviewError::Rejected(why) => Some(Refusal::Rejected(why.clone())),
            ReviewError::NotAPodToken(why) => Some(Refusal::NotAPodToken(why)),
            ReviewError::Api(_) => None,
        }
    }

    fn error(&self) -> ReviewError {
        match self {
            Refusal::Rejected(why) => ReviewError::Rejected(why.clone()),
            Refusal::NotAPodToken(why) => ReviewError::NotAPodToken(why),
        }
    }
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
        TokenReviewer { api: Api::all(client), cache: Mutex::default(), refused: Mutex::default() }
    }

    fn refused_before(&self, key: &[u8; 32], now: Instant) -> Option<ReviewError> {
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.get(key).filter(|(_, until)| now < *until).map(|(refusal, _)| refusal.error())
    }

    fn remember_refusal(&self, key: [u8; 32], refusal: Refusal, now: Instant) {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused.len() >= REFUSED_MAX {
            refused.retain(|_, (_, until)| now < *until);
            if refused.len() >= REFUSED_MAX {
                refused.clear();
            }
        }
        refused.insert(key, (refusal, now + REFUSED_FOR));
    }

    /// Remembered refusals (for tests and metrics).
    pub fn refused_len(&self) -> usize {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).len()
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
            if let Some(error) = self.refused_before(&key, Instant::now()) {
                return Err(error);
            }
            let pod = match self.review_uncached(token).await {
                Ok(pod) => pod,
                Err(error) => {
                    if let Some(refusal) = Refusal::of(&error) {
                        self.remember_refusal(key, refusal, Instant::now());
                    }
                    return Err(error);
                }
            };
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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

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

    /// A TokenReviewer against a stand-in API server that authenticates only "good" (for pod
    /// shop/web-1), fails while `down` is set, and counts the reviews it is asked for.
    fn counting_reviewer() -> (TokenReviewer, Arc<AtomicUsize>, Arc<std::sync::atomic::AtomicBool>) {
        let (asked, down) = (Arc::new(AtomicUsize::new(0)), Arc::new(std::sync::atomic::AtomicBool::new(false)));
        let (count, fail) = (asked.clone(), down.clone());
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let (count, fail) = (count.clone(), fail.clone());
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                if fail.load(Ordering::SeqCst) {
                    let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500, "message": "down", "reason": "InternalError"});
                    return Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .status(500)
                            .body(kube::client::Body::from(body.to_string().into_bytes()))
                            .unwrap(),
                    );
                }
                let bytes = http_body_util::BodyExt::collect(request.into_body()).await.unwrap().to_bytes();
                let review: TokenReview = serde_json::from_slice(&bytes).unwrap();
                let good = review.spec.token == "good";
                let status = if good {
                    status("system:serviceaccount:shop:default", &[REPORT_AUDIENCE], Some(("web-1", "u-1")))
                } else {
                    TokenReviewStatus {
                        authenticated: Some(false),
                        error: Some("invalid bearer token".into()),
                        ..Default::default()
                    }
                };
                let answer = TokenReview { status: Some(status), ..review };
                let mut json = serde_json::to_value(&answer).unwrap();
                json["apiVersion"] = "authentication.k8s.io/v1".into();
                json["kind"] = "TokenReview".into();
                Ok(http::Response::builder()
                    .status(201)
                    .body(kube::client::Body::from(json.to_string().into_bytes()))
                    .unwrap())
            }
        });
        (TokenReviewer::new(kube::Client::new(service, "default")), asked, down)
    }

    #[tokio::test]
    async fn a_refused_token_is_refused_again_without_asking_the_api_server() {
        let (reviewer, asked, down) = counting_reviewer();
        for _ in 0..50 {
            let error = reviewer.review("bogus").await.unwrap_err();
            assert!(matches!(error, ReviewError::Rejected(ref why) if why.contains("invalid bearer token")), "{error}");
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1, "one review for fifty pushes of the same bogus token");
        assert_eq!(reviewer.refused_len(), 1);
        reviewer.review("good").await.unwrap();
        reviewer.review("good").await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 2, "accepted tokens are cached too");
        // A failure to ask is not a refusal: asked again next time.
        down.store(true, Ordering::SeqCst);
        assert!(matches!(reviewer.review("other").await, Err(ReviewError::Api(_))));
        assert!(matches!(reviewer.review("other").await, Err(ReviewError::Api(_))));
        assert_eq!(asked.load(Ordering::SeqCst), 4);
        assert_eq!(reviewer.refused_len(), 1);
    }

    #[tokio::test]
    async fn remembered_refusals_expire_and_stay_bounded() {
        let (reviewer, _, _) = counting_reviewer();
        let t0 = Instant::now();
        reviewer.remember_refusal([1; 32], Refusal::Rejected("no".into()), t0);
        assert!(reviewer.refused_before(&[1; 32], t0 + REFUSED_FOR - Duration::from_secs(1)).is_some());
        assert!(reviewer.refused_before(&[1; 32], t0 + REFUSED_FOR).is_none(), "asked again after a minute");
        for i in 0..(REFUSED_MAX + 5) {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_be_bytes());
            reviewer.remember_refusal(key, Refusal::NotAPodToken("x"), t0);
        }
        assert!(reviewer.refused_len() <= REFUSED_MAX);
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
