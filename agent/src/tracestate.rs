//! The OpenTelemetry `ot` entry of a W3C `tracestate`: `ot=th:<hex>;rv:<hex>`.
//!
//! Only the two sub-keys sampling needs are interpreted; every other list member and `ot`
//! sub-key is carried through untouched.

/// Number of bits of randomness and of the threshold.
pub const BITS: u32 = 56;
/// 2^56: one more than the largest randomness value.
pub const MAX: u64 = 1 << BITS;
const HEX_DIGITS: usize = 14;

/// What the `ot` entry says about sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OtFields {
    /// Rejection threshold already applied upstream (`th`), when valid.
    pub threshold: Option<u64>,
    /// Explicit randomness (`rv`), when valid.
    pub randomness: Option<u64>,
}

/// The `ot` fields of a tracestate; invalid values are ignored (treated as absent).
pub fn ot_fields(tracestate: &str) -> OtFields {
    let Some(ot) = ot_value(tracestate) else { return OtFields::default() };
    let mut out = OtFields::default();
    for (key, value) in ot.split(';').filter_map(|kv| kv.split_once(':')) {
        match key {
            "th" => out.threshold = parse_threshold(value),
            "rv" => out.randomness = parse_randomness(value),
            _ => {}
        }
    }
    out
}

fn ot_value(tracestate: &str) -> Option<&str> {
    tracestate.split(',').map(str::trim).find_map(|member| member.strip_prefix("ot="))
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `th`: 1 to 14 hex digits, trailing zeros omitted (so `c` means 0xc0000000000000).
pub fn parse_threshold(value: &str) -> Option<u64> {
    if value.is_empty() || value.len() > HEX_DIGITS || !is_lower_hex(value) {
        return None;
    }
    let raw = u64::from_str_radix(value, 16).ok()?;
    Some(raw << (4 * (HEX_DIGITS - value.len())))
}

/// `rv`: exactly 14 hex digits.
pub fn parse_randomness(value: &str) -> Option<u64> {
    if value.len() != HEX_DIGITS || !is_lower_hex(value) {
        return None;
    }
    u64::from_str_radix(value, 16).ok()
}

/// The `th` encoding of a threshold below 2^56: 14 hex digits with trailing zeros removed.
pub fn format_threshold(threshold: u64) -> String {
    let full = format!("{:014x}", threshold & (MAX - 1));
    let trimmed = full.trim_end_matches('0');
    if trimmed.is_empty() {
        "0".to_string()
    } else {
        trimmed.to_string()
    }
}

/// The tracestate with `ot`'s `th` set to `threshold`, other `ot` sub-keys kept; the modified
/// `ot` member moves to the front of the list as W3C Trace Context requires of an update.
pub fn with_threshold(tracestate: &str, threshold: u64) -> String {
    let th = format!("th:{}", format_threshold(threshold));
    let mut others = Vec::new();
    let mut ot_sub: Vec<&str> = Vec::new();
    for member in tracestate.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        match member.strip_prefix("ot=") {
            Some(ot) => ot_sub.extend(ot.split(';').filter(|kv| !kv.is_empty() && !kv.starts_with("th:"))),
            None => others.push(member),
        }
    }
    let mut ot = th;
    for kv in ot_sub {
        ot.push(';');
        ot.push_str(kv);
    }
    let mut out = format!("ot={ot}");
    for member in others {
        out.push(',');
        out.push_str(member);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_digits_are_left_aligned() {
        assert_eq!(parse_threshold("c"), Some(0xc0_0000_0000_0000));
        assert_eq!(parse_threshold("0"), Some(0));
        assert_eq!(parse_threshold("fffffffffffffe"), Some(0xff_ffff_ffff_fffe));
        assert_eq!(parse_threshold(""), None);
        assert_eq!(parse_threshold("C"), None);
        assert_eq!(parse_threshold("fffffffffffffff"), None);
    }

    #[test]
    fn threshold_round_trips_through_its_encoding() {
        for t in [0u64, 1, 0x80_0000_0000_0000, 0xe6_6666_6666_6666, MAX - 1] {
            assert_eq!(parse_threshold(&format_threshold(t)), Some(t), "{t:x}");
        }
        assert_eq!(format_threshold(0x80_0000_0000_0000), "8");
    }

    #[test]
    fn randomness_needs_exactly_fourteen_digits() {
        assert_eq!(parse_randomness("00000000000001"), Some(1));
        assert_eq!(parse_randomness("1"), None);
        assert_eq!(parse_randomness("zz000000000001"), None);
    }

    #[test]
    fn ot_fields_read_from_any_member_position() {
        let f = ot_fields("vendor=x, ot=rv:ffffffffffffff;th:8;foo:bar");
        assert_eq!(f.threshold, Some(0x80_0000_0000_0000));
        assert_eq!(f.randomness, Some(0xff_ffff_ffff_ffff));
        assert_eq!(ot_fields("ot=th:XYZ"), OtFields::default());
        assert_eq!(ot_fields(""), OtFields::default());
    }

    #[test]
    fn setting_threshold_keeps_other_members_and_subkeys() {
        assert_eq!(with_threshold("", 0x80_0000_0000_0000), "ot=th:8");
        assert_eq!(
            with_threshold("a=1,ot=th:4;rv:00000000000001,b=2", 0xc0_0000_0000_0000),
            "ot=th:c;rv:00000000000001,a=1,b=2"
        );
    }
}
