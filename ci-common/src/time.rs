//! Timestamps as the API shows them.

use chrono::{DateTime, SecondsFormat, Utc};

/// Formats a UTC time as ISO-8601 ending in `Z` with microseconds, the shape the
/// reference implementation's clients parse (`2025-01-02T03:04:05.123456Z`).
pub fn to_api_string(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Serde adapter for `Option<DateTime<Utc>>` in the API's format.
pub mod api_format_opt {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::to_api_string(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let raw: Option<String> = Option::deserialize(d)?;
        raw.map(|s| super::parse_api_string(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Parses an ISO-8601 time; a missing offset is taken as UTC, as the reference
/// implementation writes naive UTC times in some versions.
pub fn parse_api_string(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    match DateTime::parse_from_rfc3339(s) {
        Ok(t) => Ok(t.with_timezone(&Utc)),
        Err(e) => chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
            .map(|n| n.and_utc())
            .map_err(|_| e),
    }
}

/// The current time at the precision the databases keep (microseconds), so a
/// value read back equals the value written.
pub fn now() -> DateTime<Utc> {
    from_micros(to_micros(Utc::now()))
}

/// Microseconds since the epoch: how the databases store times, so that both
/// SQLite and PostgreSQL sort and compare them the same way.
pub fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The inverse of [`to_micros`].
pub fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn api_strings_end_in_z_and_round_trip() {
        let t =
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::microseconds(42);
        let s = to_api_string(t);
        assert_eq!(s, "2026-01-02T03:04:05.000042Z");
        assert_eq!(parse_api_string(&s).unwrap(), t);
        assert_eq!(parse_api_string("2026-01-02T03:04:05.000042").unwrap(), t);
        assert_eq!(from_micros(to_micros(t)), t);
    }
}
