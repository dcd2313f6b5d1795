//! Projection: the files of configMap, secret, downwardAPI and projected volumes (with their
//! service account tokens, cluster trust bundles and pod certificates), computed from the
//! objects they name. Pure: the caller fetches the objects and writes the files.
//!
//! Semantics as upstream's volume plugins: without `items` every key becomes a file named after
//! it; with `items` only those keys, at their paths, and a missing key is an error unless the
//! source is optional; a missing object is an error unless optional (then the volume is empty);
//! `mode` overrides `defaultMode` (0644 when unset); two sources writing one path is an error.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, VolumeProjection,
};

use super::atomic::{File, Files, check_path};
use crate::pods::env::{self, Downward};

/// The mode of a volume file when neither `mode` nor `defaultMode` says.
pub const DEFAULT_MODE: i32 = 0o644;

/// The objects a pod's volumes name, fetched by the caller; absent names do not exist.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub config_maps: HashMap<String, ConfigMap>,
    pub secrets: HashMap<String, Secret>,
    /// Service account tokens, by the projection's path.
    pub tokens: HashMap<String, String>,
    /// ClusterTrustBundle PEM files, by the projection's path.
    pub trust_bundles: HashMap<String, Vec<u8>>,
    /// Issued pod certificates, by volume name and source index.
    pub pod_certificates: HashMap<(String, usize), super::pod_certificate::Credential>,
}

/// Why a volume's files cannot be made; the message is what the FailedMount event says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("configmap references non-existent config key: {0}")]
    ConfigMapKey(String),
    #[error("references non-existent secret key: {0}")]
    SecretKey(String),
    #[error("{0}")]
    Path(#[from] super::atomic::PathError),
    #[error("invalid mode {mode:#o} for {path:?}: must be between 0 and 0777")]
    Mode { path: String, mode: i32 },
    #[error("conflicting projections: more than one source writes {0:?}")]
    Conflict(String),
    #[error("downward API: {0}")]
    Downward(String),
    #[error("no service account token for {0:?}")]
    Token(String),
    #[error("no trust bundle for {0:?}")]
    TrustBundle(String),
    #[error("no credentials yet for pod certificate source {0} of the volume")]
    PodCertificate(usize),
}

fn mode_of(path: &str, mode: Option<i32>, default_mode: Option<i32>) -> Result<u32, Error> {
    let mode = mode.or(default_mode).unwrap_or(DEFAULT_MODE);
    if !(0..=0o777).contains(&mode) {
        return Err(Error::Mode {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(mode as u32)
}

fn insert(files: &mut Files, path: String, file: File) -> Result<(), Error> {
    check_path(&path)?;
    if files.insert(path.clone(), file).is_some() {
        return Err(Error::Conflict(path));
    }
    Ok(())
}

/// Files from one key/value source (a ConfigMap's or a Secret's data).
fn key_files(
    files: &mut Files,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    optional: bool,
    missing_key: impl Fn(&str) -> Error,
) -> Result<(), Error> {
    match items {
        None => {
            for (key, value) in data {
                let mode = mode_of(key, None, default_mode)?;
                insert(
                    files,
                    key.clone(),
                    File {
                        data: value.clone(),
                        mode,
                    },
                )?;
            }
        }
        Some(items) => {
            for item in items {
                let Some(value) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(missing_key(&item.key));
                };
                let mode = mode_of(&item.path, item.mode, default_mode)?;
                insert(
                    files,
                    item.path.clone(),
                    File {
                        data: value.clone(),
                        mode,
                    },
                )?;
            }
        }
    }
    Ok(())
}

fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
        .collect();
    data.extend(
        cm.binary_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone())),
    );
    data
}

fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    // The API never returns stringData, but a hand-made object may carry it.
    data.extend(
        secret
            .string_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec())),
    );
    data
}

/// A key/value object's files, or nothing when it is absent and optional.
#[allow(clippy::too_many_arguments)]
fn object_files(
    files: &mut Files,
    data: Option<BTreeMap<String, Vec<u8>>>,
    missing: Error,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    optional: bool,
    missing_key: impl Fn(&str) -> Error,
) -> Result<(), Error> {
    match data {
        Some(data) => key_files(files, &data, items, default_mode, optional, missing_key),
        None if optional => Ok(()),
        None => Err(missing),
    }
}

/// A configMap source (a `configMap` volume or a projection of one).
pub fn config_map(
    files: &mut Files,
    objects: &Objects,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<(), Error> {
    object_files(
        files,
        objects.config_maps.get(name).map(config_map_data),
        Error::ConfigMapNotFound(name.to_owned()),
        items,
        default_mode,
        optional,
        |k| Error::ConfigMapKey(k.to_owned()),
    )
}

/// A secret source.
pub fn secret(
    files: &mut Files,
    objects: &Objects,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<(), Error> {
    object_files(
        files,
        objects.secrets.get(name).map(secret_data),
        Error::SecretNotFound(name.to_owned()),
        items,
        default_mode,
        optional,
        |k| Error::SecretKey(k.to_owned()),
    )
}

/// `key="value"` lines, sorted by key, values escaped as Go's `%q` would: the format of the
/// kubelet's `metadata.labels` and `metadata.annotations` files.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::from(v.as_str())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A downwardAPI source.
pub fn downward_api(
    files: &mut Files,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    downward: &Downward,
) -> Result<(), Error> {
    let spec = pod.spec.clone().unwrap_or_default();
    for item in items {
        let value = if let Some(field) = &item.field_ref {
            match field.field_path.as_str() {
                "metadata.labels" => format_map(pod.metadata.labels.as_ref()),
                "metadata.annotations" => format_map(pod.metadata.annotations.as_ref()),
                path => env::field_value(pod, path, downward)
                    .map_err(|e| Error::Downward(e.to_string()))?,
            }
        } else if let Some(resource) = &item.resource_field_ref {
            let name = resource.container_name.as_deref().unwrap_or_default();
            let container: Option<&Container> = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .find(|c| c.name == name);
            let Some(container) = container else {
                return Err(Error::Downward(format!(
                    "container {name:?} of resourceFieldRef {:?} not found",
                    item.path
                )));
            };
            env::resource_value(
                container,
                &resource.resource,
                resource.divisor.as_ref().map(|d| d.0.as_str()),
                downward,
            )
            .map_err(|e| Error::Downward(e.to_string()))?
        } else {
            return Err(Error::Downward(format!(
                "{:?} has neither fieldRef nor resourceFieldRef",
                item.path
            )));
        };
        let mode = mode_of(&item.path, item.mode, default_mode)?;
        insert(
            files,
            item.path.clone(),
            File {
                data: value.into_bytes(),
                mode,
            },
        )?;
    }
    Ok(())
}

/// The sources of a projected volume, in order.
pub fn projected(
    files: &mut Files,
    objects: &Objects,
    pod: &Pod,
    volume: &str,
    sources: &[VolumeProjection],
    default_mode: Option<i32>,
    downward: &Downward,
) -> Result<(), Error> {
    for (index, source) in sources.iter().enumerate() {
        if let Some(cm) = &source.config_map {
            config_map(
                files,
                objects,
                &cm.name,
                cm.items.as_ref(),
                default_mode,
                cm.optional == Some(true),
            )?;
        }
        if let Some(s) = &source.secret {
            secret(
                files,
                objects,
                &s.name,
                s.items.as_ref(),
                default_mode,
                s.optional == Some(true),
            )?;
        }
        if let Some(d) = &source.downward_api {
            downward_api(
                files,
                pod,
                d.items.as_deref().unwrap_or_default(),
                default_mode,
                downward,
            )?;
        }
        if let Some(token) = &source.service_account_token {
            let value = objects
                .tokens
                .get(&token.path)
                .ok_or_else(|| Error::Token(token.path.clone()))?;
            let mode = mode_of(&token.path, None, default_mode)?;
            insert(
                files,
                token.path.clone(),
                File {
                    data: value.clone().into_bytes(),
                    mode,
                },
            )?;
        }
        if let Some(bundle) = &source.cluster_trust_bundle {
            let data = objects
                .trust_bundles
                .get(&bundle.path)
                .ok_or_else(|| Error::TrustBundle(bundle.path.clone()))?;
            let mode = mode_of(&bundle.path, None, default_mode)?;
            insert(
                files,
                bundle.path.clone(),
                File {
                    data: data.clone(),
                    mode,
                },
            )?;
        }
        if let Some(certificate) = &source.pod_certificate {
            let credential = objects
                .pod_certificates
                .get(&(volume.to_owned(), index))
                .ok_or(Error::PodCertificate(index))?;
            // A key file others in the pod's group could read is no key: with an fsGroup
            // the files are the owner's alone, as upstream.
            let fs_group = pod
                .spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|s| s.fs_group)
                .is_some();
            let bundle = [credential.key.as_slice(), credential.chain.as_slice()].concat();
            let paths = [
                (&certificate.credential_bundle_path, bundle),
                (&certificate.key_path, credential.key.clone()),
                (
                    &certificate.certificate_chain_path,
                    credential.chain.clone(),
                ),
            ];
            for (path, data) in paths {
                let Some(path) = path.as_ref().filter(|p| !p.is_empty()) else {
                    continue;
                };
                let mode = if fs_group {
                    0o600
                } else {
                    mode_of(path, None, default_mode)?
                };
                insert(files, path.clone(), File { data, mode })?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{
        ClusterTrustBundleProjection, ConfigMapProjection, DownwardAPIProjection,
        ObjectFieldSelector, PodCertificateProjection, SecretProjection,
        ServiceAccountTokenProjection,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn objects() -> Objects {
        let cm = ConfigMap {
            data: Some(BTreeMap::from([
                ("app.conf".to_owned(), "x=1".to_owned()),
                ("other".to_owned(), "y".to_owned()),
            ])),
            ..ConfigMap::default()
        };
        let secret = Secret {
            data: Some(BTreeMap::from([(
                "password".to_owned(),
                ByteString(b"s3cret".to_vec()),
            )])),
            ..Secret::default()
        };
        Objects {
            config_maps: HashMap::from([("cfg".to_owned(), cm)]),
            secrets: HashMap::from([("creds".to_owned(), secret)]),
            tokens: HashMap::from([("token".to_owned(), "jwt".to_owned())]),
            trust_bundles: HashMap::from([("ca.pem".to_owned(), b"PEM".to_vec())]),
            pod_certificates: HashMap::new(),
        }
    }

    fn item(key: &str, path: &str, mode: Option<i32>) -> KeyToPath {
        KeyToPath {
            key: key.into(),
            path: path.into(),
            mode,
            ..KeyToPath::default()
        }
    }

    fn text(files: &Files, path: &str) -> String {
        String::from_utf8(files[path].data.clone()).expect("utf-8")
    }

    #[test]
    fn every_key_or_only_the_items_with_their_modes() {
        let mut all = Files::new();
        config_map(&mut all, &objects(), "cfg", None, Some(0o600), false).expect("all keys");
        assert_eq!(all.keys().collect::<Vec<_>>(), ["app.conf", "other"]);
        assert_eq!(all["other"].mode, 0o600);

        let mut some = Files::new();
        let items = vec![item("app.conf", "conf/app.conf", Some(0o400))];
        config_map(&mut some, &objects(), "cfg", Some(&items), None, false).expect("items");
        assert_eq!(some.keys().collect::<Vec<_>>(), ["conf/app.conf"]);
        assert_eq!(some["conf/app.conf"].mode, 0o400);
        assert_eq!(text(&some, "conf/app.conf"), "x=1");
    }

    #[test]
    fn missing_objects_and_keys_fail_unless_optional() {
        let mut files = Files::new();
        assert_eq!(
            config_map(&mut files, &objects(), "nope", None, None, false),
            Err(Error::ConfigMapNotFound("nope".into()))
        );
        assert_eq!(
            config_map(&mut files, &objects(), "nope", None, None, true),
            Ok(())
        );
        let items = vec![item("absent", "a", None)];
        assert_eq!(
            secret(&mut files, &objects(), "creds", Some(&items), None, false),
            Err(Error::SecretKey("absent".into()))
        );
        assert_eq!(
            secret(&mut files, &objects(), "creds", Some(&items), None, true),
            Ok(())
        );
        assert!(files.is_empty());
    }

    #[test]
    fn bad_paths_and_modes_are_refused() {
        let mut files = Files::new();
        let escape = vec![item("app.conf", "../../etc/cron.d/x", None)];
        assert!(matches!(
            config_map(&mut files, &objects(), "cfg", Some(&escape), None, false),
            Err(Error::Path(_))
        ));
        let absolute = vec![item("app.conf", "/etc/passwd", None)];
        assert!(matches!(
            config_map(&mut files, &objects(), "cfg", Some(&absolute), None, false),
            Err(Error::Path(_))
        ));
        assert!(matches!(
            config_map(&mut files, &objects(), "cfg", None, Some(0o1777), false),
            Err(Error::Mode { .. })
        ));
    }

    #[test]
    fn a_projected_volume_combines_its_sources() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("prod".into()),
                labels: Some(BTreeMap::from([
                    ("app".to_owned(), "web".to_owned()),
                    ("tier".to_owned(), "front \"end\"".to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        let field = |path: &str, field: &str| DownwardAPIVolumeFile {
            path: path.into(),
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                ..ObjectFieldSelector::default()
            }),
            ..DownwardAPIVolumeFile::default()
        };
        let sources = vec![
            VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    path: "token".into(),
                    ..ServiceAccountTokenProjection::default()
                }),
                ..VolumeProjection::default()
            },
            VolumeProjection {
                config_map: Some(ConfigMapProjection {
                    name: "cfg".into(),
                    items: Some(vec![item("app.conf", "ca.crt", None)]),
                    ..ConfigMapProjection::default()
                }),
                ..VolumeProjection::default()
            },
            VolumeProjection {
                downward_api: Some(DownwardAPIProjection {
                    items: Some(vec![
                        field("namespace", "metadata.namespace"),
                        field("labels", "metadata.labels"),
                    ]),
                }),
                ..VolumeProjection::default()
            },
            VolumeProjection {
                cluster_trust_bundle: Some(ClusterTrustBundleProjection {
                    path: "ca.pem".into(),
                    signer_name: Some("example.com/signer".into()),
                    ..ClusterTrustBundleProjection::default()
                }),
                ..VolumeProjection::default()
            },
            VolumeProjection {
                pod_certificate: Some(PodCertificateProjection {
                    credential_bundle_path: Some("tls/bundle.pem".into()),
                    key_path: Some("tls/key.pem".into()),
                    certificate_chain_path: Some("tls/chain.pem".into()),
                    key_type: "ED25519".into(),
                    signer_name: "example.com/signer".into(),
                    ..PodCertificateProjection::default()
                }),
                ..VolumeProjection::default()
            },
        ];
        let mut with_certificate = objects();
        with_certificate.pod_certificates.insert(
            ("vol".into(), 4),
            super::super::pod_certificate::Credential {
                key: b"KEY\n".to_vec(),
                chain: b"CHAIN\n".to_vec(),
                refresh_at: k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            },
        );
        let mut files = Files::new();
        projected(
            &mut files,
            &with_certificate,
            &pod,
            "vol",
            &sources,
            Some(0o640),
            &Downward::default(),
        )
        .expect("projected");
        // The bundle is the key, then the chain: one read gets a matching pair.
        assert_eq!(text(&files, "tls/bundle.pem"), "KEY\nCHAIN\n");
        assert_eq!(text(&files, "tls/key.pem"), "KEY\n");
        assert_eq!(text(&files, "tls/chain.pem"), "CHAIN\n");
        // Not issued yet: no files, and the set-up says why.
        assert_eq!(
            projected(
                &mut Files::new(),
                &objects(),
                &pod,
                "vol",
                &sources,
                None,
                &Downward::default()
            ),
            Err(Error::PodCertificate(4))
        );
        assert_eq!(text(&files, "token"), "jwt");
        assert_eq!(text(&files, "ca.pem"), "PEM");
        assert_eq!(files["ca.pem"].mode, 0o640);
        assert_eq!(text(&files, "ca.crt"), "x=1");
        assert_eq!(text(&files, "namespace"), "prod");
        assert_eq!(
            text(&files, "labels"),
            "app=\"web\"\ntier=\"front \\\"end\\\"\""
        );
        assert!(files.values().all(|f| f.mode == 0o640));

        // Two sources for one path.
        let mut twice = sources.clone();
        twice.push(VolumeProjection {
            secret: Some(SecretProjection {
                name: "creds".into(),
                items: Some(vec![item("password", "token", None)]),
                ..SecretProjection::default()
            }),
            ..VolumeProjection::default()
        });
        let mut files = Files::new();
        assert_eq!(
            projected(
                &mut files,
                &with_certificate,
                &pod,
                "vol",
                &twice,
                None,
                &Downward::default()
            ),
            Err(Error::Conflict("token".into()))
        );
    }
}
