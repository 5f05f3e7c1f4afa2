//! Serving certificates for the webhook (pure part): making a CA and a leaf, reading what a
//! certificate says, deciding when to renew, and the live-swappable rustls certificate resolver.
//!
//! The I/O around it (the Secret, the webhook configuration, files on disk) is in `rotation.rs`.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

/// The CA lives this many times longer than the serving certificates it signs, so a leaf never
/// outlives its CA and the CA is renewed rarely.
pub const CA_VALIDITY_FACTOR: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating {what}: {source}")]
    Generate { what: &'static str, source: rcgen::Error },
    #[error("parsing {what}: {detail}")]
    Parse { what: &'static str, detail: String },
    #[error("loading the serving certificate into rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

fn generate(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Generate { what, source }
}

fn parse(what: &'static str) -> impl FnOnce(String) -> CertError {
    move |detail| CertError::Parse { what, detail }
}

/// A PEM certificate and its PEM private key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPairPem {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for KeyPairPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private keys.
        f.debug_struct("KeyPairPem").field("cert", &self.cert.len()).finish_non_exhaustive()
    }
}

/// Everything the self-signed mode keeps in its Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMaterial {
    pub ca: KeyPairPem,
    pub leaf: KeyPairPem,
    /// The CA replaced by the last CA renewal, still trusted until it expires so that callers
    /// holding the old bundle and servers holding an old leaf keep working during the overlap.
    pub previous_ca: Option<String>,
}

impl TlsMaterial {
    /// The PEM bundle for `caBundle`: the current CA, plus the previous one while it is valid.
    pub fn ca_bundle(&self, now: OffsetDateTime) -> String {
        let previous = self.previous_ca.as_deref().filter(|pem| inspect(pem).is_ok_and(|info| info.not_after > now));
        match previous {
            Some(previous) => format!("{}{}", self.ca.cert, previous),
            None => self.ca.cert.clone(),
        }
    }
}

/// What the webhook's certificate is for: the Service DNS names plus extra SANs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafSpec {
    pub sans: Vec<String>,
    pub validity: Duration,
}

impl LeafSpec {
    /// `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`, `<svc>.<ns>.svc.cluster.local`, then `extra`
    /// (IP addresses become IP SANs, for an API server calling an operator outside the cluster).
    pub fn for_service(service: &str, namespace: &str, extra: &[String], validity: Duration) -> Self {
        let mut sans = vec![
            service.to_string(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ];
        for san in extra {
            if !sans.contains(san) {
                sans.push(san.clone());
            }
        }
        LeafSpec { sans, validity }
    }
}

/// Start of a certificate's validity: slightly in the past, to tolerate clock skew between the
/// operator and the API server, but by a small fraction so short test validities still work.
fn backdated(now: OffsetDateTime, validity: Duration) -> OffsetDateTime {
    now - (validity / 10).min(Duration::from_secs(300))
}

/// A new self-signed CA valid `validity` from `now`.
pub fn make_ca(now: OffsetDateTime, validity: Duration) -> Result<KeyPairPem, CertError> {
    let key = KeyPair::generate().map_err(generate("CA key"))?;
    let mut params = CertificateParams::default();
    // A key fingerprint keeps successive CAs distinguishable (issuer matching, debugging).
    let fingerprint: String = Sha256::digest(key.public_key_raw()).iter().take(6).map(|b| format!("{b:02x}")).collect();
    params.distinguished_name.push(DnType::CommonName, format!("tracelight-webhook-ca-{fingerprint}"));
    params.distinguished_name.push(DnType::OrganizationName, "tracelight");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = backdated(now, validity);
    params.not_after = now + validity;
    let cert = params.self_signed(&key).map_err(generate("CA certificate"))?;
    Ok(KeyPairPem { cert: cert.pem(), key: key.serialize_pem() })
}

/// A serving certificate for `spec.sans`, signed by `ca`, valid `spec.validity` from `now` but
/// never past the CA's own expiry.
pub fn make_leaf(ca: &KeyPairPem, spec: &LeafSpec, now: OffsetDateTime) -> Result<KeyPairPem, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(generate("CA key (from PEM)"))?;
    let ca_not_after = inspect(&ca.cert)?.not_after;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(generate("CA issuer"))?;
    let key = KeyPair::generate().map_err(generate("serving key"))?;
    let mut params = CertificateParams::new(spec.sans.clone()).map_err(generate("serving certificate SANs"))?;
    let common_name = spec.sans.first().cloned().unwrap_or_else(|| "tracelight-webhook".to_string());
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = backdated(now, spec.validity);
    params.not_after = (now + spec.validity).min(ca_not_after);
    let cert = params.signed_by(&key, &issuer).map_err(generate("serving certificate"))?;
    Ok(KeyPairPem { cert: cert.pem(), key: key.serialize_pem() })
}

/// What a certificate says, as far as renewal cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub subject: Vec<u8>,
    pub issuer: Vec<u8>,
    /// DNS names and IP addresses (as text).
    pub sans: BTreeSet<String>,
}

/// Reads the first certificate of a PEM text.
pub fn inspect(cert_pem: &str) -> Result<CertInfo, CertError> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| parse("certificate PEM")(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| parse("certificate DER")(e.to_string()))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| parse("subjectAltName")(e.to_string()))?
        .map(|ext| ext.value.general_names.iter().filter_map(san_text).collect())
        .unwrap_or_default();
    Ok(CertInfo {
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        subject: cert.subject().as_raw().to_vec(),
        issuer: cert.issuer().as_raw().to_vec(),
        sans,
    })
}

fn san_text(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(dns) => Some(dns.to_string()),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(*bytes).ok().map(|b| IpAddr::from(b).to_string()),
            16 => <[u8; 16]>::try_from(*bytes).ok().map(|b| IpAddr::from(b).to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// Whether a certificate valid from `not_before` to `not_after` should be renewed at `now`:
/// less than a third of its lifetime remains (or it is already expired).
pub fn needs_renewal(not_before: OffsetDateTime, not_after: OffsetDateTime, now: OffsetDateTime) -> bool {
    let lifetime = not_after - not_before;
    not_after - now < lifetime / 3
}

/// What to change, if anything, in `current` at `now` so that a valid serving certificate for
/// `spec` is served. `None` means `current` is fine as it is.
pub fn plan(
    current: Option<&TlsMaterial>,
    spec: &LeafSpec,
    now: OffsetDateTime,
) -> Result<Option<TlsMaterial>, CertError> {
    let ca_validity = spec.validity * CA_VALIDITY_FACTOR;
    let Some(current) = current else {
        let ca = make_ca(now, ca_validity)?;
        let leaf = make_leaf(&ca, spec, now)?;
        return Ok(Some(TlsMaterial { ca, leaf, previous_ca: None }));
    };
    let Ok(ca_info) = inspect(&current.ca.cert) else {
        return plan(None, spec, now); // unreadable: start over
    };
    if needs_renewal(ca_info.not_before, ca_info.not_after, now) {
        let ca = make_ca(now, ca_validity)?;
        let leaf = make_leaf(&ca, spec, now)?;
        return Ok(Some(TlsMaterial { ca, leaf, previous_ca: Some(current.ca.cert.clone()) }));
    }
    let mut next = current.clone();
    let mut changed = false;
    if next.previous_ca.as_deref().is_some_and(|pem| !inspect(pem).is_ok_and(|info| info.not_after > now)) {
        next.previous_ca = None;
        changed = true;
    }
    if leaf_needs_replacing(&current.leaf.cert, &ca_info, spec, now) {
        next.leaf = make_leaf(&current.ca, spec, now)?;
        changed = true;
    }
    Ok(changed.then_some(next))
}

/// The leaf is unreadable, due for renewal, not issued by the current CA, or lacks a SAN.
fn leaf_needs_replacing(leaf_pem: &str, ca: &CertInfo, spec: &LeafSpec, now: OffsetDateTime) -> bool {
    let Ok(leaf) = inspect(leaf_pem) else { return true };
    let wanted: BTreeSet<String> = spec.sans.iter().map(|s| normalize_san(s)).collect();
    needs_renewal(leaf.not_before, leaf.not_after, now) || leaf.issuer != ca.subject || !wanted.is_subset(&leaf.sans)
}

fn normalize_san(san: &str) -> String {
    san.parse::<IpAddr>().map(|ip| ip.to_string()).unwrap_or_else(|_| san.to_string())
}

/// Parses a PEM chain and key into what rustls serves.
pub fn certified_key(pair: &KeyPairPem) -> Result<CertifiedKey, CertError> {
    let chain = CertificateDer::pem_slice_iter(pair.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse("serving certificate chain")(e.to_string()))?;
    if chain.is_empty() {
        return Err(parse("serving certificate chain")("no CERTIFICATE block".to_string()));
    }
    let key = PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).map_err(|e| parse("serving key")(e.to_string()))?;
    Ok(CertifiedKey::from_der(chain, key, &ring::default_provider())?)
}

/// The certificate the HTTPS server presents, swappable while the server runs: each new TLS
/// handshake picks up the latest one, so rotation needs no restart.
#[derive(Debug, Default)]
pub struct CertResolver {
    current: RwLock<Option<(KeyPairPem, Arc<CertifiedKey>)>>,
    /// PEM bundle of the CA(s) that sign the served certificate, when known: agents verify the
    /// report endpoint with it (the controller copies it into their ConfigMaps).
    ca_bundle: RwLock<Option<String>>,
}

impl CertResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `pair` from the next handshake on. Returns whether it differs from the one served.
    pub fn set(&self, pair: &KeyPairPem) -> Result<bool, CertError> {
        if self.current.read().unwrap_or_else(PoisonError::into_inner).as_ref().is_some_and(|(p, _)| p == pair) {
            return Ok(false);
        }
        let key = Arc::new(certified_key(pair)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some((pair.clone(), key));
        Ok(true)
    }

    /// Records the CA bundle clients should trust (`None`: unknown).
    pub fn set_ca_bundle(&self, bundle: Option<String>) {
        *self.ca_bundle.write().unwrap_or_else(PoisonError::into_inner) = bundle;
    }

    /// The CA bundle clients should trust, when known.
    pub fn ca_bundle(&self) -> Option<String> {
        self.ca_bundle.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// When the served certificate expires (`None`: none loaded yet, or unreadable).
    pub fn not_after(&self) -> Option<OffsetDateTime> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().and_then(|(pair, _)| inspect(&pair.cert).ok()).map(|info| info.not_after)
    }

    /// A certificate is loaded (for `/readyz`).
    pub fn is_loaded(&self) -> bool {
        self.current.read().unwrap_or_else(PoisonError::into_inner).is_some()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).as_ref().map(|(_, key)| key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn spec() -> LeafSpec {
        LeafSpec::for_service("tracelight-webhook", "tracelight-system", &["127.0.0.1".to_string()], HOUR)
    }

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn service_sans_cover_every_dns_form_plus_extras() {
        let extra = ["127.0.0.1".to_string(), "tracelight-webhook".to_string()];
        let spec = LeafSpec::for_service("tracelight-webhook", "ops", &extra, HOUR);
        assert_eq!(
            spec.sans,
            [
                "tracelight-webhook",
                "tracelight-webhook.ops",
                "tracelight-webhook.ops.svc",
                "tracelight-webhook.ops.svc.cluster.local",
                "127.0.0.1"
            ]
        );
    }

    #[test]
    fn leaf_is_signed_by_ca_with_dns_and_ip_sans() {
        let ca = make_ca(t0(), 4 * HOUR).unwrap();
        let leaf = make_leaf(&ca, &spec(), t0()).unwrap();
        let (ca_info, leaf_info) = (inspect(&ca.cert).unwrap(), inspect(&leaf.cert).unwrap());
        assert_eq!(leaf_info.issuer, ca_info.subject);
        assert!(leaf_info.sans.contains("tracelight-webhook.tracelight-system.svc"));
        assert!(leaf_info.sans.contains("127.0.0.1"), "IP SAN expected: {:?}", leaf_info.sans);
        assert_eq!(leaf_info.not_after, t0() + HOUR);
        assert!(leaf_info.not_before < t0(), "backdated for clock skew");
        certified_key(&leaf).expect("rustls accepts the pair");
    }

    #[test]
    fn leaf_never_outlives_its_ca() {
        let ca = make_ca(t0(), HOUR / 2).unwrap();
        let leaf = make_leaf(&ca, &spec(), t0()).unwrap();
        assert_eq!(inspect(&leaf.cert).unwrap().not_after, t0() + HOUR / 2);
    }

    #[test]
    fn renewal_is_due_when_less_than_a_third_remains() {
        let (start, end) = (t0(), t0() + 3 * HOUR);
        assert!(!needs_renewal(start, end, t0()));
        assert!(!needs_renewal(start, end, t0() + 2 * HOUR - Duration::from_secs(1)));
        assert!(needs_renewal(start, end, t0() + 2 * HOUR + Duration::from_secs(1)));
        assert!(needs_renewal(start, end, t0() + 4 * HOUR), "expired certificates are renewed");
    }

    #[test]
    fn plan_creates_everything_then_keeps_it_while_fresh() {
        let first = plan(None, &spec(), t0()).unwrap().expect("bootstrap");
        assert!(first.previous_ca.is_none());
        assert_eq!(plan(Some(&first), &spec(), t0() + HOUR / 2).unwrap(), None);
    }

    #[test]
    fn plan_renews_only_the_leaf_when_it_is_due() {
        let first = plan(None, &spec(), t0()).unwrap().unwrap();
        let later = t0() + HOUR * 3 / 4;
        let next = plan(Some(&first), &spec(), later).unwrap().expect("leaf renewal");
        assert_eq!(next.ca, first.ca);
        assert_ne!(next.leaf, first.leaf);
        assert_eq!(inspect(&next.leaf.cert).unwrap().not_after, later + HOUR);
    }

    #[test]
    fn plan_renews_the_ca_and_keeps_the_old_one_in_the_bundle() {
        let first = plan(None, &spec(), t0()).unwrap().unwrap();
        let later = t0() + 3 * HOUR; // CA lives 4h: less than a third left
        let next = plan(Some(&first), &spec(), later).unwrap().expect("CA renewal");
        assert_ne!(next.ca, first.ca);
        assert_eq!(next.previous_ca.as_deref(), Some(first.ca.cert.as_str()));
        assert_eq!(inspect(&next.leaf.cert).unwrap().issuer, inspect(&next.ca.cert).unwrap().subject);
        let bundle = next.ca_bundle(later);
        assert!(bundle.starts_with(&next.ca.cert) && bundle.ends_with(&first.ca.cert));
        // Once the old CA has expired it leaves the bundle and the Secret.
        let after_old_expiry = t0() + 4 * HOUR + Duration::from_secs(1);
        assert_eq!(next.ca_bundle(after_old_expiry), next.ca.cert);
        let pruned = plan(Some(&next), &spec(), after_old_expiry).unwrap().expect("prune");
        assert!(pruned.previous_ca.is_none());
    }

    #[test]
    fn plan_reissues_the_leaf_when_a_san_is_added() {
        let first = plan(None, &spec(), t0()).unwrap().unwrap();
        let mut wider = spec();
        wider.sans.push("10.0.0.7".to_string());
        let next = plan(Some(&first), &wider, t0()).unwrap().expect("new SAN");
        assert!(inspect(&next.leaf.cert).unwrap().sans.contains("10.0.0.7"));
    }

    #[test]
    fn resolver_swaps_certificates_and_reports_changes() {
        let resolver = CertResolver::new();
        assert!(!resolver.is_loaded());
        let material = plan(None, &spec(), t0()).unwrap().unwrap();
        assert!(resolver.set(&material.leaf).unwrap());
        assert!(!resolver.set(&material.leaf).unwrap(), "same pair is not a change");
        assert!(resolver.is_loaded());
        let garbage = KeyPairPem { cert: "not pem".into(), key: material.leaf.key.clone() };
        assert!(resolver.set(&garbage).is_err());
        assert!(resolver.is_loaded(), "a bad pair keeps the old one");
    }
}
