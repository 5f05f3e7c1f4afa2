//! The OTLP trace messages as a table of field numbers and kinds, and a validator that walks a
//! message against it without building anything: the same request prost decodes is accepted
//! here, and one it refuses (wrong wire type for a known field, invalid UTF-8 in a string,
//! broken framing, nesting deeper than its limit) is refused too. Unknown fields are skipped,
//! as every protobuf reader does, and forwarded untouched.

use super::reader::{Field, Fields, Value, I32, I64, LEN, MAX_DEPTH, VARINT};
use super::WireError;

/// The messages of `ExportTraceServiceRequest` (opentelemetry-proto 1.x).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    Request,
    ResourceSpans,
    Resource,
    EntityRef,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

/// What a known field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// int32/int64/uint32/bool/enum.
    Varint,
    /// fixed64/double.
    Fixed64,
    Fixed32,
    Bytes,
    /// UTF-8, as proto3 requires of `string`.
    Str,
    Msg(Message),
}

impl Kind {
    fn wire_type(self) -> u8 {
        match self {
            Kind::Varint => VARINT,
            Kind::Fixed64 => I64,
            Kind::Fixed32 => I32,
            Kind::Bytes | Kind::Str | Kind::Msg(_) => LEN,
        }
    }
}

/// Field numbers the schema knows are below this.
const FIELDS: usize = 17;
const MESSAGES: usize = Message::KeyValueList as usize + 1;

/// `Message::known_field` as tables, built at compile time: the lookup on every field of every
/// span is then an index instead of a branchy match.
static TABLES: [[Option<Kind>; FIELDS]; MESSAGES] = {
    let mut tables = [[None; FIELDS]; MESSAGES];
    let mut m = 0;
    while m < MESSAGES {
        let message = Message::ALL[m];
        let mut n = 0;
        while n < FIELDS {
            tables[m][n] = message.known_field(n as u32);
            n += 1;
        }
        m += 1;
    }
    tables
};

impl Message {
    const ALL: [Message; MESSAGES] = [
        Message::Request,
        Message::ResourceSpans,
        Message::Resource,
        Message::EntityRef,
        Message::ScopeSpans,
        Message::Scope,
        Message::Span,
        Message::Event,
        Message::Link,
        Message::Status,
        Message::KeyValue,
        Message::AnyValue,
        Message::ArrayValue,
        Message::KeyValueList,
    ];

    /// The kind of field `number`, `None` for a field this schema does not know.
    #[inline]
    pub fn field(self, number: u32) -> Option<Kind> {
        TABLES[self as usize].get(number as usize).copied().flatten()
    }

    const fn known_field(self, number: u32) -> Option<Kind> {
        use Kind::{Bytes, Fixed32, Fixed64, Msg, Str, Varint};
        use Message as M;
        Some(match (self, number) {
            (M::Request, 1) => Msg(M::ResourceSpans),
            (M::ResourceSpans, 1) => Msg(M::Resource),
            (M::ResourceSpans, 2) => Msg(M::ScopeSpans),
            (M::ResourceSpans, 3) => Str,
            (M::Resource, 1) => Msg(M::KeyValue),
            (M::Resource, 2) => Varint,
            (M::Resource, 3) => Msg(M::EntityRef),
            (M::EntityRef, 1..=4) => Str,
            (M::ScopeSpans, 1) => Msg(M::Scope),
            (M::ScopeSpans, 2) => Msg(M::Span),
            (M::ScopeSpans, 3) => Str,
            (M::Scope, 1 | 2) => Str,
            (M::Scope, 3) => Msg(M::KeyValue),
            (M::Scope, 4) => Varint,
            (M::Span, 1 | 2 | 4) => Bytes,
            (M::Span, 3 | 5) => Str,
            (M::Span, 6 | 10 | 12 | 14) => Varint,
            (M::Span, 7 | 8) => Fixed64,
            (M::Span, 9) => Msg(M::KeyValue),
            (M::Span, 11) => Msg(M::Event),
            (M::Span, 13) => Msg(M::Link),
            (M::Span, 15) => Msg(M::Status),
            (M::Span, 16) => Fixed32,
            (M::Event, 1) => Fixed64,
            (M::Event, 2) => Str,
            (M::Event, 3) => Msg(M::KeyValue),
            (M::Event, 4) => Varint,
            (M::Link, 1 | 2) => Bytes,
            (M::Link, 3) => Str,
            (M::Link, 4) => Msg(M::KeyValue),
            (M::Link, 5) => Varint,
            (M::Link, 6) => Fixed32,
            (M::Status, 2) => Str,
            (M::Status, 3) => Varint,
            (M::KeyValue, 1) => Str,
            (M::KeyValue, 2) => Msg(M::AnyValue),
            (M::KeyValue, 3) => Varint,
            (M::AnyValue, 1) => Str,
            (M::AnyValue, 2 | 3 | 8) => Varint,
            (M::AnyValue, 4) => Fixed64,
            (M::AnyValue, 5) => Msg(M::ArrayValue),
            (M::AnyValue, 6) => Msg(M::KeyValueList),
            (M::AnyValue, 7) => Bytes,
            (M::ArrayValue, 1) => Msg(M::AnyValue),
            (M::KeyValueList, 1) => Msg(M::KeyValue),
            _ => return None,
        })
    }
}

#[inline]
/// Check one field of `message` against the schema: its wire type, and unless the caller walks
/// it itself (`shallow`), its contents. Returns the field's kind (`None`: unknown, skipped).
pub fn check_field(message: Message, field: &Field<'_>, depth: u32, shallow: bool) -> Result<Option<Kind>, WireError> {
    let Some(kind) = message.field(field.number) else { return Ok(None) };
    if field.value.wire_type() != kind.wire_type() {
        return Err(WireError::Malformed("wrong wire type for a known field"));
    }
    if !shallow {
        if let Value::Len(bytes) = field.value {
            check_contents(kind, bytes, depth)?;
        }
    }
    Ok(Some(kind))
}

fn check_contents(kind: Kind, bytes: &[u8], depth: u32) -> Result<(), WireError> {
    match kind {
        Kind::Str if valid_utf8(bytes) => Ok(()),
        Kind::Str => Err(NOT_UTF8),
        Kind::Msg(inner) => validate(inner, bytes, depth),
        _ => Ok(()),
    }
}

const NOT_UTF8: WireError = WireError::Malformed("string field is not valid UTF-8");

/// A string field's text.
pub fn utf8(bytes: &[u8]) -> Result<&str, WireError> {
    std::str::from_utf8(bytes).map_err(|_| NOT_UTF8)
}

/// Most strings in spans are short ASCII, which `is_ascii` checks several times faster than
/// the general UTF-8 validation it falls back to.
#[inline]
pub fn valid_utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

/// Validate a whole message body, `depth` levels of nesting allowed below it.
pub fn validate(message: Message, body: &[u8], depth: u32) -> Result<(), WireError> {
    if message == Message::KeyValue && is_plain_string_attribute(body) {
        return Ok(());
    }
    let depth = enter(depth)?;
    let mut fields = Fields::new(body);
    while let Some(field) = fields.next_field()? {
        check_field(message, &field, depth, false)?;
    }
    Ok(())
}

/// Most attributes are `KeyValue { key: 1, value: AnyValue { string_value: 1 } }` with short
/// ASCII key and value, exactly as every SDK encodes them: recognised in one pass over a few
/// bytes. Anything else (longer, other types, other field order) takes the general path.
#[inline]
fn is_plain_string_attribute(kv: &[u8]) -> bool {
    plain_attribute_parts(kv).is_some_and(|(key, string)| key.is_ascii() && string.is_ascii())
}

/// The key and string value of a `KeyValue` of `is_plain_string_attribute`'s shape, their
/// contents not yet checked (`None`: another shape).
#[inline]
pub fn plain_attribute_parts(kv: &[u8]) -> Option<(&[u8], &[u8])> {
    let [0x0a, key_len, rest @ ..] = kv else { return None };
    let key_len = usize::from(*key_len);
    if key_len >= 0x80 || rest.len() < key_len {
        return None;
    }
    let (key, rest) = rest.split_at(key_len);
    let [0x12, any_len, 0x0a, string_len, string @ ..] = rest else { return None };
    let (any_len, string_len) = (usize::from(*any_len), usize::from(*string_len));
    (any_len < 0x80 && string_len < 0x80 && any_len == string_len + 2 && string.len() == string_len)
        .then_some((key, string))
}

/// One level deeper, or the recursion limit error.
pub fn enter(depth: u32) -> Result<u32, WireError> {
    depth.checked_sub(1).ok_or(WireError::Malformed("recursion limit reached"))
}

/// The depth a request is entered with: like prost, 100 levels of messages below it.
pub const REQUEST_DEPTH: u32 = MAX_DEPTH + 1;

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
    use prost::Message as _;

    fn nested(levels: usize) -> AnyValue {
        let mut v = AnyValue { value: Some(any_value::Value::IntValue(1)) };
        for _ in 0..levels {
            v = AnyValue { value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })) };
        }
        v
    }

    #[test]
    fn plain_string_attributes_take_the_short_path_only_when_valid() {
        let kv = KeyValue {
            key: "http.route".into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue("/items".into())) }),
            key_strindex: 0,
        };
        let bytes = kv.encode_to_vec();
        assert!(is_plain_string_attribute(&bytes));
        // Non-ASCII, trailing fields, a cut: not the short path (the general one judges).
        let accented = KeyValue { key: "é".into(), ..kv.clone() }.encode_to_vec();
        assert!(!is_plain_string_attribute(&accented));
        assert_eq!(validate(Message::KeyValue, &accented, MAX_DEPTH), Ok(()));
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(&[0x18, 0x01]);
        assert!(!is_plain_string_attribute(&trailing));
        assert!(!is_plain_string_attribute(&bytes[..bytes.len() - 1]));
        let int = KeyValue { value: Some(AnyValue { value: Some(any_value::Value::IntValue(3)) }), ..kv };
        assert!(!is_plain_string_attribute(&int.encode_to_vec()));
    }

    #[test]
    fn tables_match_the_schema() {
        for m in Message::ALL {
            for n in 0..40 {
                assert_eq!(m.field(n), m.known_field(n), "{m:?} field {n}");
            }
        }
        assert_eq!(Message::Span.field(16), Some(Kind::Fixed32));
    }

    #[test]
    fn deep_nesting_is_refused_like_prost() {
        let shallow = nested(10).encode_to_vec();
        assert_eq!(validate(Message::AnyValue, &shallow, MAX_DEPTH), Ok(()));
        let deep = nested(200).encode_to_vec();
        assert!(validate(Message::AnyValue, &deep, MAX_DEPTH).is_err());
        assert!(AnyValue::decode(&deep[..]).is_err());
    }

    #[test]
    fn invalid_utf8_in_a_nested_string_is_refused() {
        let kv = KeyValue { key: "k".into(), value: None, key_strindex: 0 };
        let mut bytes = kv.encode_to_vec();
        bytes[2] = 0xff;
        assert!(validate(Message::KeyValue, &bytes, MAX_DEPTH).is_err());
        assert!(KeyValue::decode(&bytes[..]).is_err());
    }

    #[test]
    fn wrong_wire_type_for_a_known_field_is_refused() {
        // Request field 1 (ResourceSpans) as a varint.
        let bytes = [0x08, 0x01];
        assert!(validate(Message::Request, &bytes, MAX_DEPTH).is_err());
        assert!(ExportTraceServiceRequest::decode(&bytes[..]).is_err());
        // An unknown field of any wire type is fine.
        let bytes = [0x78, 0x01];
        assert_eq!(validate(Message::Request, &bytes, MAX_DEPTH), Ok(()));
        assert!(ExportTraceServiceRequest::decode(&bytes[..]).is_ok());
    }
}
