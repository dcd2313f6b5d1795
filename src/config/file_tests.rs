//! `--config` files: what kubeadm writes is accepted, flags win over the file, and what nodus
//! does not implement is listed instead of dropped.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::CommandFactory;

use super::*;
use crate::config::{Config, Thresholds, flags_with_file};

/// The KubeletConfiguration kubeadm (v1.3x) writes to /var/lib/kubelet/config.yaml.
const KUBEADM: &str = r#"apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 0s
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 0s
    cacheUnauthorizedTTL: 0s
cgroupDriver: systemd
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
containerRuntimeEndpoint: ""
cpuManagerReconcilePeriod: 0s
crashLoopBackOff: {}
evictionPressureTransitionPeriod: 0s
fileCheckFrequency: 0s
healthzBindAddress: 127.0.0.1
healthzPort: 10248
httpCheckFrequency: 0s
imageMaximumGCAge: 0s
imageMinimumGCAge: 0s
kind: KubeletConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
memorySwap: {}
nodeStatusReportFrequency: 0s
nodeStatusUpdateFrequency: 0s
rotateCertificates: true
runtimeRequestTimeout: 0s
shutdownGracePeriod: 0s
shutdownGracePeriodCriticalPods: 0s
staticPodPath: /etc/kubernetes/manifests
streamingConnectionIdleTimeout: 0s
syncFrequency: 0s
volumeStatsAggPeriod: 0s
"#;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("a temporary file");
    f.write_all(text.as_bytes()).expect("writing it");
    f
}

/// The command line `nodus --kubeconfig /k --config FILE ARGS...`, parsed as main does.
fn parse(text: &str, args: &[&str]) -> Result<(Flags, Vec<String>), FileError> {
    let f = file(text);
    let path = f.path().to_str().expect("a UTF-8 path").to_owned();
    let all = ["nodus", "--kubeconfig", "/k", "--config", &path]
        .into_iter()
        .chain(args.iter().copied());
    let matches = Flags::command()
        .try_get_matches_from(all)
        .expect("the command line parses");
    flags_with_file(&matches)
}

fn config(flags: Flags) -> Config {
    Config::from_flags(flags, || Ok("node-a".to_owned())).expect("a valid configuration")
}

#[test]
fn the_file_kubeadm_writes_is_accepted_and_its_unsupported_fields_listed() {
    let (flags, unsupported) = parse(KUBEADM, &[]).expect("accepted");
    let config = config(flags);
    assert_eq!(
        config.cluster_dns,
        vec!["10.96.0.10".parse::<std::net::IpAddr>().expect("ip")]
    );
    assert_eq!(config.cluster_domain, "cluster.local");
    assert_eq!(
        config.client_ca_file.as_deref(),
        Some(Path::new("/etc/kubernetes/pki/ca.crt"))
    );
    assert!(!config.anonymous_auth);
    assert_eq!(
        config.runtime_endpoint.to_string(),
        "unix:///run/containerd/containerd.sock",
        "an empty endpoint keeps the default"
    );
    // Only what changes behaviour is listed: zero values are the defaults.
    assert_eq!(
        unsupported,
        [
            "KubeletConfiguration.cgroupDriver",
            "KubeletConfiguration.healthzBindAddress",
            "KubeletConfiguration.healthzPort",
        ]
    );
    assert_eq!(
        config.static_pods,
        Some((
            PathBuf::from("/etc/kubernetes/manifests"),
            Duration::from_secs(20)
        )),
        "staticPodPath taken, fileCheckFrequency 0s left at the default"
    );
    assert!(config.rotate_certificates);
}

#[test]
fn flags_on_the_command_line_override_the_file() {
    let text = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
                maxPods: 50\nport: 10260\nclusterDomain: example.local\n\
                evictionHard:\n  memory.available: 200Mi\n  nodefs.available: 5%\n\
                registerWithTaints:\n- key: dedicated\n  value: infra\n  effect: NoSchedule\n\
                logging:\n  verbosity: 3\n";
    let (flags, unsupported) = parse(text, &["--max-pods", "20", "-v", "1"]).expect("accepted");
    assert!(unsupported.is_empty(), "{unsupported:?}");
    let config = config(flags);
    assert_eq!(config.max_pods, 20, "the flag wins");
    assert_eq!(config.verbosity, 1, "the flag wins");
    assert_eq!(config.port, 10260, "the file sets what no flag gives");
    assert_eq!(config.cluster_domain, "example.local");
    // /configz shows the merged result in the file's terms.
    let configz = &config.configz["kubeletconfig"];
    assert_eq!(configz["maxPods"], 20);
    assert_eq!(configz["port"], 10260);
    assert_eq!(configz["evictionHard"]["nodefs.available"], "5%");
    assert_eq!(configz["evictionHard"]["memory.available"], "209715200");
    assert_eq!(configz["registerWithTaints"][0]["effect"], "NoSchedule");
    assert_eq!(config.register_with_taints[0].key, "dedicated");
    assert_eq!(
        config.register_with_taints[0].value.as_deref(),
        Some("infra")
    );
    assert_eq!(
        config.eviction_hard,
        Thresholds::parse("memory.available<200Mi,nodefs.available<5%").expect("thresholds")
    );
}

#[test]
fn a_proxy_document_configures_the_proxy_role() {
    let text = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n---\n\
                apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
                mode: iptables\nclusterCIDR: 10.244.0.0/16\nnodePortAddresses:\n- 192.0.2.0/24\n\
                syncPeriod: 1m0s\nminSyncPeriod: 500ms\nconntrack:\n  maxPerCore: 32768\n";
    let (flags, unsupported) = parse(text, &[]).expect("accepted");
    assert_eq!(
        unsupported,
        [
            "KubeProxyConfiguration.conntrack.maxPerCore",
            "KubeProxyConfiguration.mode"
        ]
    );
    let proxy = config(flags).proxy.expect("the proxy role stays on");
    assert_eq!(
        proxy.cluster_cidrs,
        vec!["10.244.0.0/16".parse::<ipnet::IpNet>().expect("cidr")]
    );
    assert_eq!(
        proxy.nodeport_addresses,
        vec!["192.0.2.0/24".parse::<ipnet::IpNet>().expect("cidr")]
    );
    assert_eq!(proxy.sync_period, std::time::Duration::from_secs(60));
    assert_eq!(proxy.min_sync_period, std::time::Duration::from_millis(500));
}

#[test]
fn bad_files_are_refused_with_the_reason() {
    let kubelet = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";
    let cases = [
        ("maxPods: [1", "not YAML"),
        ("- a\n- b\n", "not a mapping"),
        (
            "apiVersion: v1\nkind: ConfigMap\n",
            "expected kind KubeletConfiguration",
        ),
        (&format!("{kubelet}maxPods: many\n"), "maxPods must be"),
        (
            &format!("{kubelet}clusterDNS: 10.96.0.10\n"),
            "clusterDNS must be",
        ),
        (
            &format!("{kubelet}---\n{kubelet}"),
            "two KubeletConfiguration documents",
        ),
        ("", "no configuration document"),
    ];
    for (text, reason) in cases {
        let err = parse(text, &[]).expect_err(text);
        assert!(err.to_string().contains(reason), "{text:?}: {err}");
    }
    let matches = Flags::command()
        .try_get_matches_from(["nodus", "--kubeconfig", "/k", "--config", "/nonexistent/x"])
        .expect("the command line parses");
    let err = flags_with_file(&matches).expect_err("a missing file");
    assert!(matches!(err, FileError::Read { .. }), "{err}");
}

#[test]
fn go_durations_parse() {
    assert_eq!(go_duration("30s"), Some(30.0));
    assert_eq!(go_duration("1m30s"), Some(90.0));
    assert_eq!(go_duration("1.5h"), Some(5400.0));
    assert_eq!(go_duration("250ms"), Some(0.25));
    assert_eq!(go_duration("0s"), Some(0.0));
    assert_eq!(go_duration("0"), Some(0.0));
    assert_eq!(go_duration("10"), None);
    assert_eq!(go_duration("5d"), None);
}
