//! Part sizes as people write them: `4GiB`, `700MiB`, `4G`, `4.7GB`, `1048576`.
//!
//! The units follow GNU `split -b`, which the people cutting media already know: `K`, `M`, `G`,
//! `T` and `KiB` … `TiB` are powers of 1024; `KB` … `TB` are powers of 1000 (so `4.7GB`, what a
//! DVD's label says, is 4,700,000,000 bytes). Case is ignored in the unit, and a `B` alone is
//! bytes. A fraction is allowed with a unit; the result is rounded down to whole bytes.

/// Parses a size. The error says what was wrong, for the CLI to show.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim_start();
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use bytes, K/KiB, M/MiB, G/GiB, T/TiB for \
                 powers of 1024, or KB, MB, GB, TB for powers of 1000)"
            ));
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a size (e.g. 4GiB, 700MiB, 4G, 1048576)"));
    }
    if number.contains('.')
        && (fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("{text:?}: malformed number"));
    }
    if !fraction.is_empty() && multiplier == 1 {
        return Err(format!("{text:?}: a number of bytes is whole"));
    }
    let too_large = || format!("{text:?} is too large");
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    // The fraction's digits beyond what the unit can express change nothing after rounding down;
    // 20 digits keep the arithmetic inside u128.
    let fraction = &fraction[..fraction.len().min(20)];
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 =
        if fraction.is_empty() { 0 } else { fraction.parse().map_err(|_| too_large())? };
    let bytes = whole
        .checked_mul(u128::from(multiplier))
        .and_then(|w| w.checked_add(fraction * u128::from(multiplier) / scale))
        .ok_or_else(too_large)?;
    u64::try_from(bytes).map_err(|_| too_large())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_people_write() {
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("4g"), Ok(4 << 30));
        assert_eq!(parse_size("700MiB"), Ok(700 << 20));
        assert_eq!(parse_size("700 MiB"), Ok(700 << 20));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4.7GB"), Ok(4_700_000_000));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("25GB"), Ok(25_000_000_000));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("1048576B"), Ok(1 << 20));
        assert!(parse_size("16EiB").unwrap_err().contains("unknown unit"));
        for bad in ["", "G", "-1", "1.5", "1.G", ".5G", "1..2G", "4 GiBs", "0x10", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
