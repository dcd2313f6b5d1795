//! Quantity: Kubernetes resource quantities (`100m`, `0.5`, `128Mi`, `1e3`) as exact
//! milli-units, for cpu shares and quotas, memory limits and `resourceFieldRef` values.

/// A parsed quantity, in thousandths of its unit (so `100m` cpu is 100, `1Ki` is 1_024_000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Milli(pub i128);

impl Milli {
    /// The value in whole units, rounded up (as the kubelet rounds cpu and bytes).
    pub fn ceil_units(self) -> i128 {
        (self.0 + 999).div_euclid(1000)
    }
}

/// Parses a quantity; `None` if it is not one.
pub fn parse(raw: &str) -> Option<Milli> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(raw.len());
    let (number, suffix) = raw.split_at(split);
    let (numerator, scale) = decimal(number)?;
    // The multiplier as (factor, exponent of ten): value = numerator / 10^scale * factor * 10^exp.
    let (factor, exp): (i128, i32) = match suffix {
        "" => (1, 0),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        s if s.starts_with(['e', 'E']) => (1, s[1..].parse().ok()?),
        _ => return None,
    };
    // Milli-units: multiply by 10^3.
    let exp = exp + 3 - scale;
    let value = numerator.checked_mul(factor)?;
    let value = if exp >= 0 {
        value.checked_mul(10i128.checked_pow(exp as u32)?)?
    } else {
        // Round up what falls below a milli-unit, as the API server does.
        let div = 10i128.checked_pow((-exp) as u32)?;
        (value + div - 1).div_euclid(div)
    };
    Some(Milli(value))
}

/// Whether a quantity was written with a binary suffix (`Ki`, `Mi`, …): sums keep the
/// notation of what they add up, as the API's `Quantity.Add` keeps its operand's format.
pub fn is_binary(raw: &str) -> bool {
    raw.trim().ends_with('i')
}

/// The canonical text of `value`, as the API server writes a quantity it computed: in
/// binary notation the largest power-of-1024 suffix that keeps the number whole (values
/// below 1024 or with a fraction fall back to decimal), in decimal notation the largest
/// power-of-1000 suffix that keeps it whole (`1500m`, `2k`, `1536`).
pub fn format(value: Milli, binary: bool) -> String {
    let Milli(milli) = value;
    if milli == 0 {
        return "0".to_owned();
    }
    if binary && milli % 1000 == 0 && milli.abs() >= 1024 * 1000 {
        const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
        let mut units = milli / 1000;
        let mut step = 0;
        while step + 1 < SUFFIXES.len() && units % 1024 == 0 {
            units /= 1024;
            step += 1;
        }
        return format!("{units}{}", SUFFIXES[step]);
    }
    // Decimal: the exponent of ten, counted from milli-units, in steps of three.
    const SUFFIXES: [&str; 8] = ["m", "", "k", "M", "G", "T", "P", "E"];
    let mut mantissa = milli;
    let mut step = 0;
    while step + 1 < SUFFIXES.len() && mantissa % 1000 == 0 {
        mantissa /= 1000;
        step += 1;
    }
    format!("{mantissa}{}", SUFFIXES[step])
}

/// `1.25` as (125, 2).
fn decimal(number: &str) -> Option<(i128, i32)> {
    let number = number.strip_prefix('+').unwrap_or(number);
    let (negative, number) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !whole
        .chars()
        .chain(fraction.chars())
        .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let digits = format!("{whole}{fraction}");
    let value: i128 = digits.parse().ok()?;
    Some((
        if negative { -value } else { value },
        i32::try_from(fraction.len()).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_the_api_accepts() {
        let cases = [
            ("100m", 100),
            ("0.5", 500),
            ("2", 2000),
            ("1Ki", 1_024_000),
            ("128Mi", 128 * 1024 * 1024 * 1000),
            ("1.5Gi", 1_610_612_736_000),
            ("1G", 1_000_000_000_000),
            ("1e3", 1_000_000),
            ("0.0001", 1),
            ("-1", -1000),
        ];
        for (raw, milli) in cases {
            assert_eq!(parse(raw), Some(Milli(milli)), "{raw}");
        }
        for bad in ["", "abc", "1Xi", "1.2.3", "m"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_as_the_api_server_canonicalises() {
        let cases = [
            ("0", false, "0"),
            ("500m", false, "500m"),
            ("1.5", false, "1500m"),
            ("1500", false, "1500"),
            ("2000", false, "2k"),
            ("3", false, "3"),
            ("-2", false, "-2"),
            ("1Gi", true, "1Gi"),
            ("1536Mi", true, "1536Mi"),
            ("1025", true, "1025"),
            ("1000", true, "1k"),
            ("512", true, "512"),
            ("2Gi", false, "2147483648"),
        ];
        for (raw, binary, want) in cases {
            let value = parse(raw).expect("parses");
            assert_eq!(format(value, binary), want, "{raw} binary={binary}");
            assert_eq!(parse(want), Some(value), "{want} reads back");
        }
        assert!(is_binary("128Mi") && !is_binary("128M") && !is_binary("1"));
    }

    #[test]
    fn rounds_up_to_whole_units() {
        assert_eq!(parse("100m").map(Milli::ceil_units), Some(1));
        assert_eq!(parse("2").map(Milli::ceil_units), Some(2));
        assert_eq!(parse("1Ki").map(Milli::ceil_units), Some(1024));
    }
}
