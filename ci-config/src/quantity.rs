//! What sizes and durations share in how the settings write them: a
//! number, then its unit.

/// `1.5 GiB` → (`1.5`, `GiB`): the text split where its first letter
/// starts, both sides trimmed; the unit is empty when there is none.
pub(crate) fn number_and_unit(text: &str) -> (&str, &str) {
    let trimmed = text.trim();
    let unit_at = trimmed
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(unit_at);
    (number.trim(), unit)
}

/// How many units, as `1.5` in `1.5GiB`: a finite number, not negative.
pub(crate) fn amount(number: &str) -> Option<f64> {
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_starts_at_the_first_letter() {
        assert_eq!(number_and_unit(" 1.5 GiB "), ("1.5", "GiB"));
        assert_eq!(number_and_unit("20s"), ("20", "s"));
        assert_eq!(number_and_unit("4096"), ("4096", ""));
        assert_eq!(number_and_unit(""), ("", ""));
    }

    #[test]
    fn an_amount_is_finite_and_not_negative() {
        assert_eq!(amount("1.5"), Some(1.5));
        assert_eq!(amount("0"), Some(0.0));
        for bad in ["-1", "inf", "NaN", "", "1e400", "x"] {
            assert_eq!(amount(bad), None, "{bad:?}");
        }
    }
}
