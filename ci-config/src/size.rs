//! Sizes as the settings write them: a byte count, or a number with a
//! binary unit, `64MiB`, `4GiB`, `1.5GiB`, for clap's `value_parser`. A bare
//! number stays a byte count, so the settings that took bytes
//! (`CI_ENV_CACHE_BYTES`, `CI_MAX_LOG_BYTES`) read the same with this parser.

use crate::quantity::{amount, number_and_unit};

/// Why a setting is not a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a size: write bytes, or a number with a unit, KiB, MiB, GiB or TiB (64MiB, 4GiB)")]
pub struct SizeError {
    text: String,
}

const UNITS: [(&str, u64); 5] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

/// `4096`, `64MiB`, `1.5 GiB` → bytes. Only binary units: `MB` could be
/// read as 10⁶ by one reader and 2²⁰ by another, so it is refused.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let error = || SizeError {
        text: text.to_string(),
    };
    let (number, unit) = number_and_unit(text);
    if unit.is_empty() {
        return number.parse().map_err(|_| error());
    }
    let (_, bytes_per_unit) = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .ok_or_else(error)?;
    let number = amount(number).ok_or_else(error)?;
    let bytes = number * *bytes_per_unit as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(error());
    }
    Ok(bytes.round() as u64)
}

/// Bytes in the largest binary unit they reach, with one decimal:
/// `4.0 GiB`, `64.0 MiB`, `512 B`, for messages people read.
pub fn format_size(bytes: u64) -> String {
    let (name, size) = UNITS
        .iter()
        .rev()
        .find(|(_, size)| bytes >= *size)
        .copied()
        .unwrap_or(UNITS[0]);
    if size == 1 {
        return format!("{bytes} B");
    }
    format!("{:.1} {name}", bytes as f64 / size as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bytes_or_a_number_with_a_binary_unit() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size(" 4GiB "), Ok(4 << 30));
        assert_eq!(parse_size("4 GiB"), Ok(4 << 30));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("10B"), Ok(10));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in [
            "", "MiB", "64MB", "64mib", "4G", "-1", "-1MiB", "1.5", "NaNGiB", "1e30TiB", "4GiBB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_are_written_in_their_largest_unit() {
        assert_eq!(format_size(4 << 30), "4.0 GiB");
        assert_eq!(format_size(64 << 20), "64.0 MiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(0), "0 B");
    }
}
