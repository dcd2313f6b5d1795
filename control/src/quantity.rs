//! Quantity: Kubernetes resource quantities (`100m`, `0.5`, `128Mi`, `1e3`) as exact
//! milli-units, so that cpu, memory and extended resources share one integer arithmetic.
//! Invariant: a quantity that does not parse is `None`, never zero.
//!
//! The agent has its own copy in `src/quantity.rs`; the control plane must not depend on the
//! agent crate, so this one lives here until a shared crate is worth its weight.

/// Parses a quantity into thousandths of its unit (`100m` cpu is 100, `1Ki` is 1_024_000).
pub fn milli(raw: &str) -> Option<i128> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(raw.len());
    let (number, suffix) = raw.split_at(split);
    let (numerator, scale) = decimal(number)?;
    // value = numerator / 10^scale * factor * 10^exp
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
    let exp = exp + 3 - scale;
    let value = numerator.checked_mul(factor)?;
    if exp >= 0 {
        value.checked_mul(10i128.checked_pow(u32::try_from(exp).ok()?)?)
    } else {
        // What falls below a milli-unit rounds up, as the API server rounds.
        let div = 10i128.checked_pow(u32::try_from(-exp).ok()?)?;
        Some((value + div - 1).div_euclid(div))
    }
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
    let value: i128 = format!("{whole}{fraction}").parse().ok()?;
    Some((
        if negative { -value } else { value },
        i32::try_from(fraction.len()).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::milli;

    #[test]
    fn parses_the_usual_forms() {
        for (raw, want) in [
            ("100m", Some(100)),
            ("2", Some(2000)),
            ("0.5", Some(500)),
            ("1Ki", Some(1_024_000)),
            ("1Gi", Some(1_073_741_824_000)),
            ("1e3", Some(1_000_000)),
            ("1k", Some(1_000_000)),
            ("0.0001", Some(1)),
            ("abc", None),
            ("1Zi", None),
            ("", None),
        ] {
            assert_eq!(milli(raw), want, "{raw}");
        }
    }
}
