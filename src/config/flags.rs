//! Flags: the command line, spelled as the kubelet spells it.

use std::path::PathBuf;

use clap::Parser;

/// nodus: a Kubernetes node agent (the kubelet and kube-proxy roles in one program).
///
/// It registers this machine as a Node with the API server, keeps the node's Lease and
/// status fresh, and runs the pods bound to it through a CRI runtime such as containerd.
#[derive(Debug, Clone, Parser)]
// A flag given twice takes its last value, as the kubelet's (pflag) command line does: a
// drop-in's extra arguments can then override the unit's.
#[command(name = "nodus", version, about, long_about, args_override_self = true)]
pub struct Flags {
    /// The kubelet's configuration file: a KubeletConfiguration (kubelet.config.k8s.io/v1beta1)
    /// and optionally a KubeProxyConfiguration document. Flags on the command line override
    /// it; fields nodus does not implement are listed in one warning at start.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Path to a kubeconfig file with the node's credentials for the API server.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: PathBuf,

    /// A kubeconfig with bootstrap credentials (a bootstrap token): when --kubeconfig is
    /// missing or its client certificate has expired, nodus asks for a node client certificate
    /// with it (TLS bootstrap) and writes --kubeconfig.
    #[arg(long, value_name = "PATH")]
    pub bootstrap_kubeconfig: Option<PathBuf>,

    /// Renew the client certificate (kubelet-client-current.pem in --cert-dir) before it
    /// expires, by a certificate signing request with the node's own identity.
    #[arg(long)]
    pub rotate_certificates: bool,

    /// Serve the kubelet API with a certificate issued through a certificate signing request
    /// (signer kubernetes.io/kubelet-serving, approved by an admin) for the node's hostname
    /// and addresses, renewed before it expires; ignored with --tls-cert-file.
    #[arg(long)]
    pub rotate_server_certificates: bool,

    /// Where TLS bootstrap keeps the node's client certificate (kubelet-client-current.pem).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/kubelet/pki")]
    pub cert_dir: PathBuf,

    /// Use this name for the node instead of the machine's hostname (lower-cased, as the kubelet does).
    #[arg(long, value_name = "NAME")]
    pub hostname_override: Option<String>,

    /// The node's IP address (or an IPv4,IPv6 pair). Default: the address of the interface that holds the default route.
    #[arg(long, value_name = "IP[,IP]")]
    pub node_ip: Option<String>,

    /// The CRI runtime's endpoint.
    #[arg(
        long,
        value_name = "ENDPOINT",
        default_value = "unix:///run/containerd/containerd.sock"
    )]
    pub container_runtime_endpoint: String,

    /// Labels to add when registering the node, as key=value pairs separated by commas.
    /// Labels in the kubernetes.io and k8s.io namespaces are limited to the kubelet's allowed set.
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub node_labels: Option<String>,

    /// Taints to register the node with, as key[=value]:Effect separated by commas.
    #[arg(long, value_name = "KEY=VALUE:EFFECT,...")]
    pub register_with_taints: Option<String>,

    /// The number of pods this node can run.
    #[arg(long, value_name = "N", default_value_t = 110)]
    pub max_pods: u32,

    /// Directory for the agent's files (pod volumes, plugins, checkpoints).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/kubelet")]
    pub root_dir: PathBuf,

    /// The pod CIDR of this node; nodus writes a CNI bridge network for it. Without it,
    /// the Node's spec.podCIDR (set by the controller manager's node IPAM) is used.
    #[arg(long, value_name = "CIDR")]
    pub pod_cidr: Option<String>,

    /// Directory the CRI runtime reads CNI network configuration from.
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,

    /// Port of the node's kubelet API server (logs, health), also reported in the Node's
    /// daemonEndpoints.
    #[arg(long, value_name = "PORT", default_value_t = 10250)]
    pub port: u16,

    /// The IP address the kubelet API server listens on.
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    pub address: std::net::IpAddr,

    /// CA bundle that signs the client certificates the kubelet API accepts (the API server's
    /// kubelet client certificate). Without it only bearer tokens authenticate.
    #[arg(long, value_name = "FILE")]
    pub client_ca_file: Option<PathBuf>,

    /// Serving certificate and key of the kubelet API; without them nodus makes a
    /// self-signed one for the node's name and addresses at start.
    #[arg(long, value_name = "FILE", requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,

    /// Route other nodes' pod CIDRs through their InternalIPs (host-gateway mode), so that
    /// pods on nodes sharing a network reach each other; `false` leaves the pod network
    /// across nodes to another network plugin.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub host_gateway_routes: bool,

    /// Let requests without credentials reach the kubelet API as system:anonymous (still
    /// subject to authorization). Off by default, unlike the kubelet's flag.
    #[arg(long, default_value_t = false)]
    pub anonymous_auth: bool,

    /// Hard eviction thresholds, e.g. memory.available<100Mi,nodefs.available<10%. They set the
    /// pressure conditions and are subtracted from allocatable. Default: the kubelet's.
    #[arg(long, value_name = "SIGNAL<QUANTITY,...")]
    pub eviction_hard: Option<String>,

    /// Resources reserved for Kubernetes system daemons, e.g. cpu=100m,memory=256Mi,
    /// ephemeral-storage=1Gi,pid=1000; subtracted from allocatable (kubelet's --kube-reserved).
    #[arg(long, value_name = "NAME=QUANTITY,...")]
    pub kube_reserved: Option<String>,

    /// Resources reserved for the operating system, in the same form (--system-reserved).
    #[arg(long, value_name = "NAME=QUANTITY,...")]
    pub system_reserved: Option<String>,

    /// A container's log is rotated once it is larger than this (kubelet's
    /// --container-log-max-size).
    #[arg(long, value_name = "QUANTITY", default_value = "10Mi")]
    pub container_log_max_size: String,

    /// How many log files a container keeps, the live one included (at least 2).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub container_log_max_files: usize,

    /// IP addresses of the cluster DNS service, comma-separated; pods with dnsPolicy
    /// ClusterFirst resolve through them. Without it they use the host's resolver.
    #[arg(long, value_name = "IP,...")]
    pub cluster_dns: Option<String>,

    /// Unsafe sysctls pods may set beside the safe ones, comma-separated names or prefixes
    /// ending in `*` (the kubelet's allowedUnsafeSysctls); each must be namespaced.
    #[arg(long, value_name = "SYSCTL,...")]
    pub allowed_unsafe_sysctls: Option<String>,

    /// The cluster's DNS domain, searched by pods with dnsPolicy ClusterFirst.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// The resolver configuration pods with dnsPolicy Default inherit.
    #[arg(long, value_name = "PATH", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,

    /// Directory for container logs, one subdirectory per pod (the kubelet's podLogsDir).
    #[arg(long, value_name = "DIR", default_value = "/var/log/pods")]
    pub pod_logs_dir: PathBuf,

    /// Directory of static pod manifests (the kubelet's staticPodPath): each file's Pod runs
    /// on this node without the API server and shows in the API as a mirror pod.
    #[arg(long, value_name = "DIR")]
    pub pod_manifest_path: Option<PathBuf>,

    /// How often the static pod directory is read again besides on inotify events (a Go
    /// duration, the kubelet's fileCheckFrequency).
    #[arg(long, value_name = "DURATION", default_value = "20s")]
    pub file_check_frequency: String,

    /// Which proxy role to run, as kube-proxy's --proxy-mode: `nftables` (the default) or
    /// `none` to leave Service load balancing to something else.
    #[arg(long, value_name = "MODE", default_value = "nftables")]
    pub proxy_mode: String,

    /// Remove nodus's service proxy rules from the kernel and exit, as kube-proxy --cleanup.
    #[arg(long)]
    pub cleanup: bool,

    /// The cluster's pod CIDRs, comma-separated: Service traffic from outside them is
    /// masqueraded (kube-proxy's --cluster-cidr).
    #[arg(long, value_name = "CIDR,...")]
    pub cluster_cidr: Option<String>,

    /// The addresses NodePorts answer on, as CIDRs (kube-proxy's --nodeport-addresses).
    /// Default: the node's IPs.
    #[arg(long, value_name = "CIDR,...")]
    pub nodeport_addresses: Option<String>,

    /// The address of the proxy's health server (kube-proxy's --healthz-bind-address).
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: String,

    /// The address of the proxy's metrics server, /metrics and /proxyMode (kube-proxy's
    /// --metrics-bind-address); port 0 turns it off.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: String,

    /// The least time between two proxy syncs; changes in between are applied together
    /// (kube-proxy's --min-sync-period).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub min_sync_period: f64,

    /// The most time between two proxy syncs (kube-proxy's --sync-period).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub sync_period: f64,

    /// Accepted for the kubelet command lines kubeadm writes (kubeadm-flags.env); as for the
    /// kubelet, the sandbox image is the CRI runtime's setting, so the value is not used.
    #[arg(long, value_name = "IMAGE", hide = true)]
    pub pod_infra_container_image: Option<String>,

    /// Log verbosity, as the kubelet's -v: 0-2 info, 3-4 debug, 5 and more trace.
    #[arg(short = 'v', long = "v", value_name = "LEVEL", default_value_t = 0)]
    pub verbosity: u8,
}
