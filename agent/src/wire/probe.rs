//! A probe span's identity and shape, read from a span's (already validated) bytes. Only spans
//! of probe traces come here (see `tracelight_contract::probe`): a second walk over those few
//! spans costs nothing measurable, and the hot path of every other span stays one comparison.

use super::reader::{Fields, Value};
use super::WireError;
use tracelight_contract::probe::{bounded_name, to_hex, ProbeSpan};
use tracelight_contract::sampling::SpanKind;

/// OTLP span flags: the SDK says whether the parent is remote (bit 9) when bit 8 is set.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// The attributes that name the other side of a call, old and new semantic conventions.
#[derive(Default)]
struct Peer<'a> {
    server_address: Option<&'a str>,
    server_port: Option<i64>,
    net_peer_name: Option<&'a str>,
    net_peer_port: Option<i64>,
    url: Option<&'a str>,
    http_host: Option<&'a str>,
    destination: Option<&'a str>,
    old_destination: Option<&'a str>,
    db: bool,
    /// Where a server span's request came from: the socket peer, else the client address
    /// (which a proxy may have set from `X-Forwarded-For`).
    socket_peer: Option<&'a str>,
    client_address: Option<&'a str>,
}

impl<'a> Peer<'a> {
    fn see(&mut self, key: &str, value: AttrValue<'a>) {
        match (key, value) {
            ("server.address", AttrValue::Str(v)) => self.server_address = Some(v),
            ("server.port", AttrValue::Int(v)) => self.server_port = Some(v),
            ("net.peer.name", AttrValue::Str(v)) => self.net_peer_name = Some(v),
            ("net.peer.port", AttrValue::Int(v)) => self.net_peer_port = Some(v),
            ("url.full" | "http.url", AttrValue::Str(v)) => self.url = Some(v),
            ("http.host", AttrValue::Str(v)) => self.http_host = Some(v),
            ("messaging.destination.name", AttrValue::Str(v)) => self.destination = Some(v),
            ("messaging.destination", AttrValue::Str(v)) => self.old_destination = Some(v),
            ("db.system" | "db.system.name", _) => self.db = true,
            ("network.peer.address" | "net.sock.peer.addr" | "net.peer.ip", AttrValue::Str(v)) => {
                self.socket_peer = Some(v)
            }
            ("client.address", AttrValue::Str(v)) => self.client_address = Some(v),
            _ => {}
        }
    }

    /// `host[:port]` of the server called: the explicit attributes first, then the URL's authority.
    fn peer(&self) -> Option<String> {
        let (url_host, url_port) = self.url.map(url_authority).unwrap_or((None, None));
        let host = self.server_address.or(self.net_peer_name).or(url_host).or(self.http_host)?;
        let port = self.server_port.or(self.net_peer_port).or(url_port);
        let host = host.trim();
        if host.is_empty() {
            return None;
        }
        Some(match port {
            Some(p) if !host.contains(':') => format!("{host}:{p}"),
            _ => host.to_string(),
        })
    }
}

/// The host and port of a URL's authority (`http://user@tax:8090/x` -> `tax`, 8090).
fn url_authority(url: &str) -> (Option<&str>, Option<i64>) {
    let Some((_, rest)) = url.split_once("://") else { return (None, None) };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.starts_with('[') {
        // An IPv6 literal: the port follows the bracket.
        let Some((host, tail)) = authority.split_once(']') else { return (None, None) };
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
        return (Some(&host[1..]), port);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (Some(host), port.parse().ok()),
        None => (Some(authority), None),
    }
}

#[derive(Clone, Copy)]
enum AttrValue<'a> {
    Str(&'a str),
    Int(i64),
    Other,
}

/// The probe record of one span of resource `service`.
pub fn probe_span(span: &[u8], service: &str) -> Result<ProbeSpan, WireError> {
    let mut out = ProbeSpan { service: bounded_name(service).to_string(), ..ProbeSpan::default() };
    let (mut start, mut end) = (0u64, 0u64);
    let mut peer = Peer::default();
    let mut fields = Fields::new(span);
    while let Some(field) = fields.next_field()? {
        match (field.number, field.value) {
            (1, Value::Len(id)) => out.trace_id = to_hex(id),
            (2, Value::Len(id)) => out.span_id = to_hex(id),
            (4, Value::Len(id)) => {
                out.parent_span_id = (!id.is_empty() && id.iter().any(|&b| b != 0)).then(|| to_hex(id))
            }
            (6, Value::Varint(kind)) => out.kind = SpanKind::from_otlp(kind),
            (7, Value::I64(t)) => start = t,
            (8, Value::I64(t)) => end = t,
            (9, Value::Len(kv)) => {
                if let Some((key, value)) = attribute(kv)? {
                    peer.see(key, value);
                }
            }
            (13, Value::Len(link)) if out.link.is_none() => out.link = link_ids(link)?,
            (15, Value::Len(status)) => out.error = super::status_is_error(status)?,
            (16, Value::I32(flags)) => {
                out.remote_parent = (flags & HAS_IS_REMOTE != 0).then_some(flags & IS_REMOTE != 0);
            }
            _ => {}
        }
    }
    out.start_unix_nano = start;
    out.duration_nanos = end.saturating_sub(start);
    out.db = peer.db;
    match out.kind {
        Some(SpanKind::Client) => out.peer = peer.peer().map(|p| bounded_name(&p).to_string()),
        Some(SpanKind::Producer | SpanKind::Consumer) => {
            out.destination = peer.destination.or(peer.old_destination).map(|d| bounded_name(d).to_string());
        }
        Some(SpanKind::Server) => {
            let caller = peer.socket_peer.or(peer.client_address).map(str::trim).filter(|c| !c.is_empty());
            out.caller = caller.map(|c| bounded_name(c).to_string());
        }
        _ => {}
    }
    Ok(out)
}

/// A link's `trace:span` ids, when both are valid.
fn link_ids(link: &[u8]) -> Result<Option<String>, WireError> {
    let (mut trace, mut span): (&[u8], &[u8]) = (&[], &[]);
    let mut fields = Fields::new(link);
    while let Some(field) = fields.next_field()? {
        match (field.number, field.value) {
            (1, Value::Len(id)) => trace = id,
            (2, Value::Len(id)) => span = id,
            _ => {}
        }
    }
    Ok(super::valid_ids(trace, span).then(|| format!("{}:{}", to_hex(trace), to_hex(span))))
}

/// A `KeyValue`'s key and value (string or integer; other values are not needed).
fn attribute(kv: &[u8]) -> Result<Option<(&str, AttrValue<'_>)>, WireError> {
    let (mut key, mut value) = (None, AttrValue::Other);
    let mut fields = Fields::new(kv);
    while let Some(field) = fields.next_field()? {
        match (field.number, field.value) {
            (1, Value::Len(k)) => key = std::str::from_utf8(k).ok(),
            (2, Value::Len(any)) => {
                let mut inner = Fields::new(any);
                while let Some(f) = inner.next_field()? {
                    value = match (f.number, f.value) {
                        (1, Value::Len(s)) => std::str::from_utf8(s).map_or(AttrValue::Other, AttrValue::Str),
                        (3, Value::Varint(i)) => AttrValue::Int(i as i64),
                        _ => AttrValue::Other,
                    };
                }
            }
            _ => {}
        }
    }
    Ok(key.map(|k| (k, value)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::{span, status, Span, Status};
    use prost::Message;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    #[test]
    fn a_client_span_names_its_server_from_old_or_new_conventions() {
        let span = Span {
            trace_id: vec![0xab; 16],
            span_id: vec![1; 8],
            parent_span_id: vec![2; 8],
            kind: 3,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 1_500,
            attributes: vec![
                kv("http.url", s("http://tax:8090/tax?cents=1")),
                kv("http.request.header.secret", s("never read")),
            ],
            flags: 0x300,
            ..Default::default()
        };
        let p = probe_span(&span.encode_to_vec(), "pricing").unwrap();
        assert_eq!(p.trace_id, "ab".repeat(16));
        assert_eq!(p.parent_span_id.as_deref(), Some("0202020202020202"));
        assert_eq!(
            (p.kind, p.peer.as_deref(), p.remote_parent),
            (Some(SpanKind::Client), Some("tax:8090"), Some(true))
        );
        assert_eq!((p.start_unix_nano, p.duration_nanos), (1_000, 500));
        assert!(!format!("{p:?}").contains("never read"), "no other attribute value is kept");

        let newer = Span {
            attributes: vec![kv("server.address", s("inventory")), kv("server.port", any_value::Value::IntValue(8080))],
            flags: 0x100,
            ..span
        };
        let p = probe_span(&newer.encode_to_vec(), "frontend").unwrap();
        assert_eq!((p.peer.as_deref(), p.remote_parent), (Some("inventory:8080"), Some(false)));
    }

    #[test]
    fn a_server_span_names_where_its_request_came_from() {
        let server = |attributes| Span {
            trace_id: vec![0xab; 16],
            span_id: vec![1; 8],
            kind: 2,
            attributes,
            ..Default::default()
        };
        let socket = server(vec![kv("client.address", s("203.0.113.9")), kv("network.peer.address", s("10.0.0.7"))]);
        let p = probe_span(&socket.encode_to_vec(), "tax").unwrap();
        assert_eq!(p.caller.as_deref(), Some("10.0.0.7"), "the socket peer wins over a forwarded client address");
        let old = server(vec![kv("net.peer.ip", s("10.0.0.8"))]);
        assert_eq!(probe_span(&old.encode_to_vec(), "tax").unwrap().caller.as_deref(), Some("10.0.0.8"));
        let forwarded = server(vec![kv("client.address", s("10.0.0.9"))]);
        assert_eq!(probe_span(&forwarded.encode_to_vec(), "tax").unwrap().caller.as_deref(), Some("10.0.0.9"));
        let client = Span { kind: 3, ..socket };
        assert_eq!(probe_span(&client.encode_to_vec(), "tax").unwrap().caller, None, "only server spans");
    }

    #[test]
    fn producers_consumers_links_databases_and_errors() {
        let producer = Span {
            trace_id: vec![1; 16],
            span_id: vec![1; 8],
            kind: 4,
            attributes: vec![kv("messaging.destination", s("celery"))],
            ..Default::default()
        };
        let p = probe_span(&producer.encode_to_vec(), "frontend").unwrap();
        assert_eq!((p.destination.as_deref(), p.parent_span_id, p.remote_parent), (Some("celery"), None, None));
        let consumer = Span {
            kind: 5,
            links: vec![span::Link { trace_id: vec![3; 16], span_id: vec![4; 8], ..Default::default() }],
            ..producer.clone()
        };
        let p = probe_span(&consumer.encode_to_vec(), "worker").unwrap();
        assert_eq!(p.link, Some(format!("{}:{}", "03".repeat(16), "04".repeat(8))));
        let db = Span {
            kind: 3,
            attributes: vec![kv("db.system", s("sqlite"))],
            status: Some(Status { code: status::StatusCode::Error as i32, ..Default::default() }),
            ..producer
        };
        let p = probe_span(&db.encode_to_vec(), "inventory").unwrap();
        assert!(p.db && p.error && p.peer.is_none());
    }

    #[test]
    fn url_authorities() {
        assert_eq!(url_authority("https://u:p@api.example.com:8443/x"), (Some("api.example.com"), Some(8443)));
        assert_eq!(url_authority("http://[::1]:80/"), (Some("::1"), Some(80)));
        assert_eq!(url_authority("http://pricing"), (Some("pricing"), None));
        assert_eq!(url_authority("/relative"), (None, None));
    }
}
