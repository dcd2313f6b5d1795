//! Root CA publisher: every active namespace holds the ConfigMap `kube-root-ca.crt` whose
//! `ca.crt` is the cluster's CA bundle, so that pods (the projected service-account volume
//! mounts it) can verify the API server.
//!
//! Invariants: only ConfigMaps named `kube-root-ca.crt` are ever written; one that is missing
//! is created, one whose `data` differs from exactly `{ca.crt: <bundle>}` or that lacks the
//! description annotation is rewritten (its other fields are kept); the bundle is read once, at
//! start. Upstream: `pkg/controller/certificates/rootcacertpublisher/publisher.go`, fed by
//! kube-controller-manager's `--root-ca-file` or else its kubeconfig's CA data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::ObjectMeta;
use kube::config::Kubeconfig;
use tokio_util::sync::CancellationToken;

use super::per_namespace::{self, Kept, Write};

pub const NAME: &str = "kube-root-ca.crt";
pub const KEY: &str = "ca.crt";
pub const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
/// Upstream's text, word for word: clients may show it.
pub const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the CA bundle {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA bundle {what} holds no PEM certificate")]
    NotPem { what: String },
    #[error("the kubeconfig's certificate-authority-data for cluster {cluster} is not base64")]
    Base64 {
        cluster: String,
        #[source]
        source: base64::DecodeError,
    },
}

/// The bundle in `path` (`--root-ca-file`), as it is: upstream publishes the file's bytes.
pub fn from_file(path: &Path) -> Result<String, Error> {
    let read = |source| Error::Read {
        path: path.to_owned(),
        source,
    };
    let bytes = std::fs::read(path).map_err(read)?;
    let text = String::from_utf8(bytes).map_err(|_| Error::NotPem {
        what: path.display().to_string(),
    })?;
    pem(text, || path.display().to_string())
}

/// The CA bundle of the kubeconfig's current cluster: its certificate-authority-data, else
/// its certificate-authority file; None when the kubeconfig names neither (or no current
/// cluster). `Kubeconfig::read_from` has already made that file's path absolute.
pub fn from_kubeconfig(kubeconfig: &Kubeconfig) -> Result<Option<String>, Error> {
    let Some(current) = kubeconfig.current_context.as_deref() else {
        return Ok(None);
    };
    let cluster_name = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.as_str());
    let Some((name, cluster)) = cluster_name.and_then(|wanted| {
        kubeconfig
            .clusters
            .iter()
            .find(|c| c.name == wanted)
            .and_then(|c| Some((c.name.as_str(), c.cluster.as_ref()?)))
    }) else {
        return Ok(None);
    };
    if let Some(data) = &cluster.certificate_authority_data {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|source| Error::Base64 {
                cluster: name.to_owned(),
                source,
            })?;
        let what = || format!("of the kubeconfig's cluster {name}");
        let text = String::from_utf8(bytes).map_err(|_| Error::NotPem { what: what() })?;
        return pem(text, what).map(Some);
    }
    match &cluster.certificate_authority {
        Some(path) => from_file(Path::new(path)).map(Some),
        None => Ok(None),
    }
}

/// Upstream refuses a bundle without certificates (`certutil.ParseCertsPEM`); this checks
/// only that one is framed, the API server being the one to parse it.
fn pem(text: String, what: impl FnOnce() -> String) -> Result<String, Error> {
    if text.contains("-----BEGIN CERTIFICATE-----") {
        Ok(text)
    } else {
        Err(Error::NotPem { what: what() })
    }
}

/// The publisher's view: the bundle it publishes.
#[derive(Debug, Clone)]
pub struct Publisher {
    pub ca: String,
}

impl Kept for Publisher {
    type Object = ConfigMap;
    const NAME: &'static str = NAME;

    fn write(&self, existing: Option<&ConfigMap>) -> Option<Write<ConfigMap>> {
        desired(&self.ca, existing)
    }
}

/// The write that makes a namespace's `kube-root-ca.crt` publish `ca`, as upstream's
/// `syncNamespace`: the data must be exactly the bundle (other keys go) and the description
/// annotation present (any value: upstream only restores a missing one).
pub fn desired(ca: &str, existing: Option<&ConfigMap>) -> Option<Write<ConfigMap>> {
    let data = BTreeMap::from([(KEY.to_owned(), ca.to_owned())]);
    let Some(existing) = existing else {
        return Some(Write::Create(ConfigMap {
            metadata: ObjectMeta {
                name: Some(NAME.into()),
                annotations: Some(BTreeMap::from([(
                    DESCRIPTION_ANNOTATION.to_owned(),
                    DESCRIPTION.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        }));
    };
    let described = existing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DESCRIPTION_ANNOTATION))
        .is_some_and(|d| !d.is_empty());
    if existing.data.as_ref() == Some(&data) && described {
        return None;
    }
    let mut fixed = existing.clone();
    fixed.data = Some(data);
    fixed
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(DESCRIPTION_ANNOTATION.to_owned(), DESCRIPTION.to_owned());
    Some(Write::Update(fixed))
}

/// Publishes `ca` in every active namespace until cancelled.
pub async fn run(client: Client, ca: String, cancel: CancellationToken) {
    per_namespace::run(client, Publisher { ca }, "root CA publisher", cancel).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn created() -> ConfigMap {
        match desired(CA, None) {
            Some(Write::Create(cm)) => cm,
            other => panic!("expected a create, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_config_map_is_created_with_the_bundle_and_description() {
        let cm = created();
        assert_eq!(cm.metadata.name.as_deref(), Some(NAME));
        assert_eq!(
            cm.data
                .as_ref()
                .and_then(|d| d.get(KEY))
                .map(String::as_str),
            Some(CA)
        );
        assert_eq!(
            cm.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DESCRIPTION_ANNOTATION))
                .map(String::as_str),
            Some(DESCRIPTION)
        );
        assert_eq!(desired(CA, Some(&cm)), None, "then it is left alone");
    }

    #[test]
    fn changed_data_is_restored_and_the_rest_kept() {
        let mut cm = created();
        cm.metadata.resource_version = Some("42".into());
        cm.metadata.labels = Some(BTreeMap::from([("team".into(), "blue".into())]));
        let mut tampered = cm.clone();
        tampered
            .data
            .get_or_insert_default()
            .insert("extra".into(), "x".into());
        assert_eq!(
            desired(CA, Some(&tampered)),
            Some(Write::Update(cm.clone()))
        );
        tampered.data = Some(BTreeMap::from([(KEY.into(), "other".into())]));
        assert_eq!(
            desired(CA, Some(&tampered)),
            Some(Write::Update(cm.clone()))
        );
        tampered.data = None;
        assert_eq!(desired(CA, Some(&tampered)), Some(Write::Update(cm)));
    }

    #[test]
    fn only_a_missing_description_is_restored() {
        let mut cm = created();
        cm.metadata.annotations = Some(BTreeMap::from([(
            DESCRIPTION_ANNOTATION.into(),
            "ours".into(),
        )]));
        assert_eq!(desired(CA, Some(&cm)), None);
        cm.metadata.annotations = None;
        assert_eq!(desired(CA, Some(&cm)), Some(Write::Update(created())));
    }

    fn kubeconfig(cluster: &str) -> Kubeconfig {
        let yaml = format!(
            "apiVersion: v1
kind: Config
current-context: admin
contexts:
- name: admin
  context: {{cluster: local, user: admin}}
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:6443
{cluster}
users:
- name: admin
  user: {{token: x}}
"
        );
        Kubeconfig::from_yaml(&yaml).expect("test kubeconfig parses")
    }

    #[test]
    fn the_kubeconfig_gives_its_current_clusters_ca_data() {
        let data = base64::engine::general_purpose::STANDARD.encode(CA);
        let config = kubeconfig(&format!("    certificate-authority-data: {data}"));
        assert_eq!(
            from_kubeconfig(&config).expect("decodes").as_deref(),
            Some(CA)
        );
        assert_eq!(from_kubeconfig(&kubeconfig("")).expect("no CA"), None);
        let not_pem = base64::engine::general_purpose::STANDARD.encode("hello");
        let config = kubeconfig(&format!("    certificate-authority-data: {not_pem}"));
        assert!(matches!(
            from_kubeconfig(&config),
            Err(Error::NotPem { .. })
        ));
    }

    #[test]
    fn a_missing_ca_file_is_an_error_naming_it() {
        let config = kubeconfig("    certificate-authority: /nonexistent/ca.crt");
        let err = from_kubeconfig(&config).expect_err("no such file");
        assert_eq!(err.to_string(), "reading the CA bundle /nonexistent/ca.crt");
    }
}
