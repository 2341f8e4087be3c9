//! Which Python a job runs: a `major.minor` version, as users ask for it
//! (`ci submit test --python 3.13`) and as runner images are labelled.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Python release series, `3.13`. Patch releases are the runner image's
/// business; a job asks for, and reports, the series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PythonVersion {
    pub major: u16,
    pub minor: u16,
}

/// A Python version that is not `major.minor`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Python version (expected major.minor, like 3.13): {0:?}")]
pub struct InvalidPythonVersion(pub String);

impl FromStr for PythonVersion {
    type Err = InvalidPythonVersion;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidPythonVersion(raw.to_string());
        let (major, minor) = raw.trim().split_once('.').ok_or_else(invalid)?;
        let number = |part: &str| {
            if part.is_empty() || part.len() > 4 || !part.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                part.parse().ok()
            }
        };
        Ok(PythonVersion {
            major: number(major).ok_or_else(invalid)?,
            minor: number(minor).ok_or_else(invalid)?,
        })
    }
}

impl fmt::Display for PythonVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl Serialize for PythonVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PythonVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_major_minor_only() {
        assert_eq!(
            "3.13".parse::<PythonVersion>(),
            Ok(PythonVersion {
                major: 3,
                minor: 13
            })
        );
        assert_eq!(
            " 3.9 ".parse::<PythonVersion>().map(|v| v.to_string()),
            Ok("3.9".into())
        );
        for bad in [
            "3", "3.13.1", "3.x", "", ".13", "3.", "-3.1", "3.+1", "99999.1",
        ] {
            assert!(bad.parse::<PythonVersion>().is_err(), "{bad}");
        }
    }

    #[test]
    fn orders_by_number_not_text() {
        let v = |s: &str| s.parse::<PythonVersion>().expect("valid");
        assert!(v("3.9") < v("3.10"));
        assert!(v("3.13") < v("4.0"));
    }

    #[test]
    fn is_a_json_string() {
        let v: PythonVersion = serde_json::from_str("\"3.12\"").expect("valid");
        assert_eq!(serde_json::to_string(&v).expect("json"), "\"3.12\"");
        assert!(serde_json::from_str::<PythonVersion>("\"twelve\"").is_err());
    }
}
