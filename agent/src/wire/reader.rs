//! Protobuf wire format, read in place and written by hand: the fields of one message as
//! borrowed slices, with the same framing rules as prost (varints of at most 10 bytes, keys
//! within `u32`, no field number 0, lengths within the buffer, unknown groups skipped to their
//! matching end). Nothing here allocates or panics on any input.

use super::WireError;

/// Wire types (the low 3 bits of a key).
pub const VARINT: u8 = 0;
pub const I64: u8 = 1;
pub const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
pub const I32: u8 = 5;

/// How deep groups and messages may nest (prost's recursion limit).
pub const MAX_DEPTH: u32 = 100;

/// A field's value, borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    I64(u64),
    I32(u32),
    Len(&'a [u8]),
    /// A (deprecated) group: only ever an unknown field, skipped whole.
    Group,
}

impl Value<'_> {
    pub fn wire_type(&self) -> u8 {
        match self {
            Value::Varint(_) => VARINT,
            Value::I64(_) => I64,
            Value::I32(_) => I32,
            Value::Len(_) => LEN,
            Value::Group => START_GROUP,
        }
    }
}

/// One field of a message: its number, value, and where it sits (key included) in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub number: u32,
    pub value: Value<'a>,
    pub start: usize,
    pub end: usize,
}

/// The fields of one message body, in order.
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    pub fn new(buf: &'a [u8]) -> Fields<'a> {
        Fields { buf, pos: 0 }
    }

    #[inline(always)]
    fn varint(&mut self) -> Result<u64, WireError> {
        // Most keys and lengths fit in one byte.
        if let Some(&byte) = self.buf.get(self.pos) {
            if byte < 0x80 {
                self.pos += 1;
                return Ok(u64::from(byte));
            }
        }
        let (value, used) = decode_varint(self.buf.get(self.pos..).unwrap_or_default())?;
        self.pos += used;
        Ok(value)
    }

    #[inline(always)]
    fn key(&mut self) -> Result<(u32, u8), WireError> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err(WireError::Malformed("field key out of range"));
        }
        let number = (key >> 3) as u32;
        if number == 0 {
            return Err(WireError::Malformed("field number 0"));
        }
        Ok((number, (key & 7) as u8))
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        if n > rest.len() {
            return Err(WireError::Malformed("field runs past the end of its message"));
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    #[inline(always)]
    fn value(&mut self, number: u32, wire_type: u8, depth: u32) -> Result<Value<'a>, WireError> {
        Ok(match wire_type {
            VARINT => Value::Varint(self.varint()?),
            I64 => Value::I64(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default())),
            I32 => Value::I32(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default())),
            LEN => {
                let n = self.varint()?;
                Value::Len(self.take(usize::try_from(n).unwrap_or(usize::MAX))?)
            }
            START_GROUP => {
                self.skip_group(number, depth)?;
                Value::Group
            }
            END_GROUP => return Err(WireError::Malformed("unexpected end-group tag")),
            _ => return Err(WireError::Malformed("invalid wire type")),
        })
    }

    /// Skip the fields of a group up to its end tag, which must carry the same field number.
    #[inline(never)]
    fn skip_group(&mut self, number: u32, depth: u32) -> Result<(), WireError> {
        if depth == 0 {
            return Err(WireError::Malformed("recursion limit reached"));
        }
        loop {
            if self.pos >= self.buf.len() {
                return Err(WireError::Malformed("group without an end tag"));
            }
            let (inner, wire_type) = self.key()?;
            if wire_type == END_GROUP {
                return if inner == number { Ok(()) } else { Err(WireError::Malformed("mismatched end-group tag")) };
            }
            self.value(inner, wire_type, depth - 1)?;
        }
    }

    /// The next field, `None` at the end of the message.
    #[inline]
    pub fn next_field(&mut self) -> Result<Option<Field<'a>>, WireError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let start = self.pos;
        let (number, wire_type) = self.key()?;
        let value = self.value(number, wire_type, MAX_DEPTH)?;
        Ok(Some(Field { number, value, start, end: self.pos }))
    }
}

/// A varint at the start of `buf`: (value, bytes used). At most 10 bytes, the 10th at most 1.
pub fn decode_varint(buf: &[u8]) -> Result<(u64, usize), WireError> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().take(10).enumerate() {
        if i == 9 && byte > 1 {
            return Err(WireError::Malformed("varint overflows 64 bits"));
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok((value, i + 1));
        }
    }
    Err(WireError::Malformed(if buf.len() < 10 { "truncated varint" } else { "varint overflows 64 bits" }))
}

pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `value` as a varint at the start of `buf` (which has room for it); returns its length.
fn put_varint_into(buf: &mut [u8], mut value: u64) -> usize {
    let mut i = 0;
    while value >= 0x80 {
        buf[i] = (value as u8) | 0x80;
        value >>= 7;
        i += 1;
    }
    buf[i] = value as u8;
    i + 1
}

pub fn varint_len(value: u64) -> usize {
    // 1 byte per started group of 7 bits, at least one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Key and length of a length-delimited field.
pub fn put_len_header(out: &mut Vec<u8>, number: u32, len: usize) {
    put_varint(out, (u64::from(number) << 3) | u64::from(LEN));
    put_varint(out, len as u64);
}

pub fn put_len_field(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    put_len_header(out, number, bytes.len());
    out.extend_from_slice(bytes);
}

/// Turns the bytes written to `out` since `start` into the body of length-delimited field
/// `number`: the key and length go in front (the body moves up by their size).
pub fn wrap_len_field(out: &mut Vec<u8>, start: usize, number: u32) {
    let len = out.len() - start;
    // Key and length are at most 5 + 10 bytes; built on the stack.
    let mut header = [0u8; 15];
    let mut n = put_varint_into(&mut header, (u64::from(number) << 3) | u64::from(LEN));
    n += put_varint_into(&mut header[n..], len as u64);
    out.extend_from_slice(&header[..n]);
    out.copy_within(start..start + len, start + n);
    out[start..start + n].copy_from_slice(&header[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn varints_round_trip_with_their_length() {
        for v in [0u64, 1, 127, 128, 300, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            assert_eq!(decode_varint(&out), Ok((v, out.len())));
            let mut theirs = Vec::new();
            prost::encoding::encode_varint(v, &mut theirs);
            assert_eq!(out, theirs, "{v}");
        }
    }

    #[test]
    fn bad_varints_are_errors() {
        assert!(decode_varint(&[0x80, 0x80]).is_err());
        assert!(decode_varint(&[]).is_err());
        assert!(decode_varint(&[0xff; 9].iter().copied().chain([2]).collect::<Vec<_>>()).is_err());
        assert_eq!(decode_varint(&[0xff; 9].iter().copied().chain([1]).collect::<Vec<_>>()), Ok((u64::MAX, 10)));
    }

    #[test]
    fn fields_of_a_message_with_their_positions() {
        let kv = opentelemetry_proto::tonic::common::v1::KeyValue { key: "k".into(), value: None, key_strindex: 5 };
        let bytes = kv.encode_to_vec();
        let mut fields = Fields::new(&bytes);
        let first = fields.next_field().expect("valid").expect("a field");
        assert_eq!((first.number, first.value, first.start, first.end), (1, Value::Len(b"k"), 0, 3));
        let second = fields.next_field().expect("valid").expect("a field");
        assert_eq!((second.number, second.value), (3, Value::Varint(5)));
        assert_eq!(fields.next_field(), Ok(None));
    }

    #[test]
    fn groups_are_skipped_to_their_matching_end() {
        // field 7 start group { field 1 varint 5 } field 7 end group, then field 2 varint 1
        let bytes = [0x3b, 0x08, 0x05, 0x3c, 0x10, 0x01];
        let mut fields = Fields::new(&bytes);
        assert_eq!(fields.next_field().expect("valid").map(|f| f.value), Some(Value::Group));
        assert_eq!(fields.next_field().expect("valid").map(|f| f.number), Some(2));
        // Mismatched end, missing end, stray end.
        assert!(Fields::new(&[0x3b, 0x44]).next_field().is_err());
        assert!(Fields::new(&[0x3b, 0x08, 0x05]).next_field().is_err());
        assert!(Fields::new(&[0x3c]).next_field().is_err());
    }

    #[test]
    fn wrapping_prefixes_key_and_length() {
        for len in [0usize, 5, 127, 128, 20_000] {
            let mut out = vec![9u8];
            out.extend(std::iter::repeat_n(7u8, len));
            wrap_len_field(&mut out, 1, 2);
            let mut expected = vec![9u8];
            put_len_field(&mut expected, 2, &vec![7u8; len]);
            assert_eq!(out, expected, "{len}");
        }
    }
}
