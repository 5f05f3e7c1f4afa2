//! A sampling probability that cannot hold an invalid value.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A probability in [0, 1]. Construction is the only place the bound is checked.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Ratio(f64);

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("sampling ratio must be a number between 0 and 1, got {0}")]
pub struct RatioError(pub f64);

impl Ratio {
    pub const ALWAYS: Ratio = Ratio(1.0);
    pub const NEVER: Ratio = Ratio(0.0);

    pub fn new(value: f64) -> Result<Self, RatioError> {
        if (0.0..=1.0).contains(&value) {
            Ok(Ratio(value))
        } else {
            Err(RatioError(value))
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for Ratio {
    fn default() -> Self {
        Ratio::ALWAYS
    }
}

impl TryFrom<f64> for Ratio {
    type Error = RatioError;
    fn try_from(value: f64) -> Result<Self, Self::Error> {
        Ratio::new(value)
    }
}

impl From<Ratio> for f64 {
    fn from(r: Ratio) -> f64 {
        r.0
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Ratio {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Ratio".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "number", "format": "double", "minimum": 0.0, "maximum": 1.0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_rejects_values_outside_unit_interval() {
        assert!(Ratio::new(1.5).is_err());
        assert!(Ratio::new(-0.1).is_err());
        assert!(Ratio::new(f64::NAN).is_err());
        assert_eq!(Ratio::new(0.25).unwrap().get(), 0.25);
        assert!(serde_json::from_str::<Ratio>("1.01").is_err());
    }
}
