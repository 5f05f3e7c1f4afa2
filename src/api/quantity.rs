//! Value types that cannot hold an invalid value: a [`Duration`] written the Go way (`90s`, `5m`,
//! `1h30m`). The sampling ratio is the contract's (`tracelight_contract::Ratio`).

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

/// A duration written as a sequence of `<integer><unit>` with units `s`, `m`, `h` (`30s`, `5m`, `1h30m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Duration(std::time::Duration);

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid duration {0:?}: expected e.g. 30s, 5m or 1h30m")]
pub struct DurationError(pub String);

/// The pattern the API server enforces; [`Duration::parse`] accepts exactly the same language.
pub const DURATION_PATTERN: &str = "^([0-9]+(h|m|s))+$";

impl Duration {
    pub fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let err = || DurationError(text.to_string());
        if text.is_empty() {
            return Err(err());
        }
        let mut total: u64 = 0;
        let mut number: Option<u64> = None;
        for c in text.chars() {
            if let Some(d) = c.to_digit(10) {
                let n = number.unwrap_or(0);
                number = Some(n.checked_mul(10).and_then(|n| n.checked_add(d as u64)).ok_or_else(err)?);
                continue;
            }
            let unit = match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => return Err(err()),
            };
            let n = number.take().ok_or_else(err)?;
            total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(err)?;
        }
        if number.is_some() {
            return Err(err()); // trailing digits without a unit
        }
        Ok(Duration(std::time::Duration::from_secs(total)))
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl TryFrom<String> for Duration {
    type Error = DurationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Duration::parse(&value)
    }
}

impl From<Duration> for String {
    fn from(d: Duration) -> String {
        d.to_string()
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        if secs == 0 {
            return write!(f, "0s");
        }
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": DURATION_PATTERN })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_parses_go_style_units() {
        assert_eq!(Duration::parse("90s").unwrap().get().as_secs(), 90);
        assert_eq!(Duration::parse("1h30m").unwrap().get().as_secs(), 5400);
        assert_eq!(Duration::parse("1h30m").unwrap().to_string(), "1h30m");
        for bad in ["", "5", "m", "5d", "1.5h", "-1s", "5 m"] {
            assert!(Duration::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn duration_round_trips_through_serde() {
        let d: Duration = serde_json::from_str("\"2m30s\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"2m30s\"");
    }
}
