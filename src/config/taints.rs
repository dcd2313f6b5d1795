//! Taints: `--register-with-taints` parsing, as `key[=value]:Effect` separated by commas.

use k8s_openapi::api::core::v1::Taint;

use super::labels::{validate_label_key, validate_label_value};

const EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

pub fn parse_taints(raw: &str) -> Result<Vec<Taint>, String> {
    let mut taints: Vec<Taint> = Vec::new();
    for spec in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let taint = parse_taint(spec)?;
        if taints
            .iter()
            .any(|t| t.key == taint.key && t.effect == taint.effect)
        {
            return Err(format!("duplicate taint {}:{}", taint.key, taint.effect));
        }
        taints.push(taint);
    }
    Ok(taints)
}

fn parse_taint(spec: &str) -> Result<Taint, String> {
    let (key_value, effect) = spec
        .rsplit_once(':')
        .ok_or_else(|| format!("taint {spec:?} has no effect (key[=value]:Effect)"))?;
    if !EFFECTS.contains(&effect) {
        return Err(format!(
            "taint {spec:?}: effect must be one of {}",
            EFFECTS.join(", ")
        ));
    }
    let (key, value) = match key_value.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (key_value, None),
    };
    validate_label_key(key).map_err(|reason| format!("taint {spec:?}: {reason}"))?;
    if let Some(value) = value {
        validate_label_value(value).map_err(|reason| format!("taint {spec:?}: {reason}"))?;
    }
    Ok(Taint {
        key: key.to_owned(),
        value: value.filter(|v| !v.is_empty()).map(str::to_owned),
        effect: effect.to_owned(),
        time_added: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_and_without_values() {
        let taints =
            parse_taints("dedicated=infra:NoSchedule,example.com/gpu:NoExecute").expect("valid");
        assert_eq!(taints.len(), 2);
        assert_eq!(
            (taints[0].key.as_str(), taints[0].value.as_deref()),
            ("dedicated", Some("infra"))
        );
        assert_eq!(taints[1].value, None);
        assert_eq!(taints[1].effect, "NoExecute");
    }

    #[test]
    fn refuses_bad_effects_keys_and_duplicates() {
        for bad in [
            "a=b",
            "a=b:Never",
            ":NoSchedule",
            "a b:NoSchedule",
            "a:NoSchedule,a=x:NoSchedule",
        ] {
            assert!(parse_taints(bad).is_err(), "{bad} must be refused");
        }
    }
}
