//! Durations as the settings write them: a number with a unit, `20s`, `90m`,
//! `12h`, `7d` (see the contract's "New settings"), for clap's
//! `value_parser` and for whatever else reads such a setting.

use std::time::Duration;

use crate::quantity::{amount, number_and_unit};

/// Why a setting is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a duration: write a number with a unit, s, m, h or d (20s, 12h, 7d)")]
pub struct DurationError {
    text: String,
}

/// `20s`, `1.5h`, `7d` → a [`Duration`]. The unit is required, so that `30`
/// cannot be read as seconds by one reader and days by another.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let error = || DurationError {
        text: text.to_string(),
    };
    let (number, unit) = number_and_unit(text);
    let seconds_per_unit = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(error()),
    };
    let number = amount(number).ok_or_else(error)?;
    Duration::try_from_secs_f64(number * seconds_per_unit).map_err(|_| error())
}

/// A duration in the largest unit that writes it whole: `7d`, `36h`, `90s`.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if duration.subsec_nanos() != 0 {
        return format!("{}s", duration.as_secs_f64());
    }
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if seconds != 0 && seconds.is_multiple_of(size) {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_a_number_with_a_unit() {
        let secs = Duration::from_secs;
        assert_eq!(parse_duration("20s"), Ok(secs(20)));
        assert_eq!(parse_duration("90m"), Ok(secs(5400)));
        assert_eq!(parse_duration("12h"), Ok(secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(secs(604_800)));
        assert_eq!(parse_duration(" 30d "), Ok(secs(2_592_000)));
        assert_eq!(parse_duration("1.5h"), Ok(secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(secs(0)));
        for bad in [
            "", "30", "d", "7 days", "7D", "-1d", "1w", "NaNs", "infd", "1e400d", "7dd",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_are_written_in_their_largest_whole_unit() {
        for text in ["7d", "36h", "90m", "45s", "0s", "1.5s"] {
            assert_eq!(
                format_duration(parse_duration(text).unwrap_or_default()),
                text
            );
        }
    }
}
