//! Components: which of nodus-control's controllers run, chosen with `--controllers` as
//! kube-controller-manager chooses them: `*` for every controller that is on by default,
//! `name` to enable one, `-name` to disable one (later entries win). Names are upstream's
//! (`deployment-controller`); the short forms without `-controller` are accepted, as
//! upstream accepts its older aliases. Three of upstream's are parts of others here:
//! taint-based eviction runs within `node-lifecycle-controller`, CSR approval within
//! `certificatesigningrequest-signing-controller`, and the TTL of finished Jobs within
//! `job-controller`.

use std::collections::BTreeSet;

/// Every controller nodus-control has, by upstream's name.
pub const CONTROLLERS: &[&str] = &[
    "bootstrap-signer-controller",
    "certificatesigningrequest-signing-controller",
    "cronjob-controller",
    "daemonset-controller",
    "deployment-controller",
    "disruption-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "garbage-collector-controller",
    "job-controller",
    "namespace-controller",
    "node-ipam-controller",
    "node-lifecycle-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    "replicaset-controller",
    "replicationcontroller-controller",
    "resourcequota-controller",
    "root-ca-certificate-publisher-controller",
    "serviceaccount-controller",
    "statefulset-controller",
    "token-cleaner-controller",
    "volumeattributesclass-protection-controller",
];

/// The ones `*` leaves out, as upstream does (kubeadm names them).
pub const OFF_BY_DEFAULT: &[&str] = &["bootstrap-signer-controller", "token-cleaner-controller"];

/// Upstream's older names that are not the new name without `-controller`.
const ALIASES: &[(&str, &str)] = &[
    ("bootstrapsigner", "bootstrap-signer-controller"),
    ("tokencleaner", "token-cleaner-controller"),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--controllers: unknown controller {0:?} (known: {known})", known = CONTROLLERS.join(", "))]
pub struct UnknownController(pub String);

/// The controllers to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection(BTreeSet<&'static str>);

fn canonical(name: &str) -> Option<&'static str> {
    CONTROLLERS
        .iter()
        .copied()
        .find(|c| *c == name || c.strip_suffix("-controller") == Some(name))
        .or_else(|| {
            ALIASES
                .iter()
                .find(|(alias, _)| *alias == name)
                .map(|(_, c)| *c)
        })
}

impl Selection {
    /// From the flag's comma-separated entries.
    pub fn parse(entries: &[String]) -> Result<Selection, UnknownController> {
        let mut on = BTreeSet::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if entry == "*" {
                on.extend(
                    CONTROLLERS
                        .iter()
                        .copied()
                        .filter(|c| !OFF_BY_DEFAULT.contains(c)),
                );
                continue;
            }
            let (enable, name) = match entry.strip_prefix('-') {
                Some(name) => (false, name),
                None => (true, entry),
            };
            let name = canonical(name).ok_or_else(|| UnknownController(name.to_owned()))?;
            if enable {
                on.insert(name);
            } else {
                on.remove(name);
            }
        }
        Ok(Selection(on))
    }

    /// Whether the controller of this (upstream) name runs.
    pub fn runs(&self, name: &str) -> bool {
        canonical(name).is_some_and(|c| self.0.contains(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &str) -> Result<Selection, UnknownController> {
        Selection::parse(&list.split(',').map(str::to_owned).collect::<Vec<_>>())
    }

    #[test]
    fn star_enables_all_and_minus_takes_away_in_order() {
        let all = parse("*").expect("valid");
        assert!(
            CONTROLLERS
                .iter()
                .filter(|c| !OFF_BY_DEFAULT.contains(c))
                .all(|c| all.runs(c))
        );
        // As upstream, `*` leaves the bootstrap controllers off; kubeadm's spelling adds them.
        assert!(!all.runs("bootstrap-signer-controller") && !all.runs("tokencleaner"));
        let kubeadm = parse("*,bootstrapsigner,tokencleaner").expect("valid");
        assert!(kubeadm.runs("bootstrap-signer-controller"));
        assert!(kubeadm.runs("token-cleaner-controller"));
        let some = parse("*,-garbage-collector,-job-controller").expect("valid");
        assert!(!some.runs("garbage-collector-controller"));
        assert!(!some.runs("job"));
        assert!(some.runs("deployment"));
        let only = parse("replicaset,deployment-controller").expect("valid");
        assert!(only.runs("replicaset-controller") && only.runs("deployment"));
        assert!(!only.runs("namespace-controller"));
        assert!(!parse("").expect("valid").runs("deployment"));
        assert_eq!(
            parse("*,-nosuch").expect_err("unknown"),
            UnknownController("nosuch".into())
        );
    }
}
