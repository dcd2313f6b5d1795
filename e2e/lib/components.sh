# Starting and stopping the cluster's processes. Each start_* is idempotent: a running
# component is left alone.

start_etcd() {
	running etcd && return 0
	mkdir -p "$STATE_DIR/etcd"
	# The cluster is thrown away after use, so etcd may keep its data in memory: on this
	# VM's disk an fsync under load stalls etcd for seconds, and every API call with it.
	mountpoint -q "$STATE_DIR/etcd" || mount -t tmpfs -o size=2g,mode=700 nodus-e2e-etcd "$STATE_DIR/etcd"
	start_process etcd etcd --name "$CLUSTER_NAME" --data-dir "$STATE_DIR/etcd" \
		--listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
		--advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster "$CLUSTER_NAME=http://127.0.0.1:$ETCD_PEER_PORT" \
		--listen-metrics-urls "" --log-level warn
	wait_until 30 "etcd" curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health" ||
		die "etcd did not become healthy; see $LOG_DIR/etcd.log"
}

start_apiserver() {
	running kube-apiserver && return 0
	local ip=$1
	start_process kube-apiserver kube-apiserver \
		--etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
		--bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" --advertise-address "$ip" \
		--tls-cert-file "$PKI_DIR/apiserver.crt" --tls-private-key-file "$PKI_DIR/apiserver.key" \
		--client-ca-file "$PKI_DIR/ca.crt" \
		--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
		--allow-privileged=true \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "$PKI_DIR/sa.pub" --service-account-signing-key-file "$PKI_DIR/sa.key" \
		--service-cluster-ip-range "$SERVICE_CIDR" \
		--enable-bootstrap-token-auth \
		--kubelet-client-certificate "$PKI_DIR/apiserver-kubelet-client.crt" \
		--kubelet-client-key "$PKI_DIR/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types InternalIP,Hostname \
		--requestheader-client-ca-file "$PKI_DIR/front-proxy-ca.crt" \
		--requestheader-allowed-names front-proxy-client \
		--requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
		--requestheader-extra-headers-prefix X-Remote-Extra- \
		--proxy-client-cert-file "$PKI_DIR/front-proxy-client.crt" \
		--proxy-client-key-file "$PKI_DIR/front-proxy-client.key" \
		--profiling=false --v 1
	wait_until 120 "kube-apiserver /readyz" kc get --raw /readyz ||
		die "kube-apiserver did not become ready; see $LOG_DIR/kube-apiserver.log"
}

# grant_cluster_access: the bindings a kubeadm cluster has, plus nodus-control's own rights.
# The proxy role reads EndpointSlices, which the Node authorizer does
# not allow a node; kube-proxy gets them through system:node-proxier, and so does nodus.
grant_cluster_access() {
	kc apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: nodus:node-proxier
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:node-proxier
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:nodes
---
# The API server reaches the kubelet API (logs, exec) with this client certificate; kubeadm
# grants it the same role.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: nodus:apiserver-kubelet-client
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:kubelet-api-admin
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: kube-apiserver-kubelet-client
---
# TLS bootstrap: bootstrap tokens may ask for node client certificates (kubeadm's binding).
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kubeadm:kubelet-bootstrap
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:node-bootstrapper
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:bootstrappers:kubeadm:default-node-token
---
# Kubelet client certificates: a bootstrapping node may ask for one, a node may renew its
# own (kubeadm's bindings; nodus-control approves after checking these).
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kubeadm:node-autoapprove-bootstrap
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:certificates.k8s.io:certificatesigningrequests:nodeclient
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:bootstrappers
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kubeadm:node-autoapprove-certificate-rotation
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:certificates.k8s.io:certificatesigningrequests:selfnodeclient
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:nodes
YAML
	# nodus-control runs as itself, with the rights it ships.
	kc apply -f "$REPO_DIR/control/deploy/rbac.yaml" >/dev/null
	publish_cluster_info
	publish_kubelet_config
}

# publish_kubelet_config: the cluster's KubeletConfiguration, where `kubeadm init` puts it
# (kube-system/kubelet-config) for joining nodes, readable by them and by bootstrap tokens.
# maxPods is not the default (110), so that a joined node shows it took the file.
publish_kubelet_config() {
	kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: ConfigMap
metadata:
  name: kubelet-config
  namespace: kube-system
data:
  kubelet: |
    apiVersion: kubelet.config.k8s.io/v1beta1
    kind: KubeletConfiguration
    authentication:
      x509:
        clientCAFile: /etc/kubernetes/pki/ca.crt
    cgroupDriver: cgroupfs
    clusterDomain: cluster.local
    maxPods: 150
    rotateCertificates: true
    staticPodPath: /etc/kubernetes/manifests
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: kubeadm:kubelet-config
  namespace: kube-system
rules:
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [kubelet-config]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: kubeadm:kubelet-config
  namespace: kube-system
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: kubeadm:kubelet-config
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:nodes
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:bootstrappers:kubeadm:default-node-token
YAML
}

# publish_cluster_info: what `kubeadm init` publishes for token discovery (`kubeadm join`,
# `nodus join`): the cluster's server and CA in kube-public/cluster-info, readable without
# credentials. nodus-control's bootstrap signer adds a signature for every signing token.
publish_cluster_info() {
	local ca
	ca=$(base64 -w0 <"$PKI_DIR/ca.crt")
	kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: ConfigMap
metadata:
  name: cluster-info
  namespace: kube-public
data:
  kubeconfig: |
    apiVersion: v1
    kind: Config
    clusters:
    - name: ""
      cluster:
        server: https://$(node_ip):$APISERVER_PORT
        certificate-authority-data: $ca
    contexts: []
    users: []
    current-context: ""
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: kubeadm:bootstrap-signer-clusterinfo
  namespace: kube-public
rules:
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [cluster-info]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: kubeadm:bootstrap-signer-clusterinfo
  namespace: kube-public
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: kubeadm:bootstrap-signer-clusterinfo
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: system:anonymous
YAML
}

# write_containerd_config: the first node's containerd; an extra node's with
# CONTAINERD_CONFIG_DIR, CONTAINERD_STATE_DIR, CONTAINERD_SOCK, CNI_CONF_DIR and RUNC_ROOT set.
write_containerd_config() {
	local config_dir=${CONTAINERD_CONFIG_DIR:-$RUN_DIR/containerd}
	local state_dir=${CONTAINERD_STATE_DIR:-$STATE_DIR/containerd}
	mkdir -p "$config_dir" "$state_dir" "$CNI_CONF_DIR"
	cat >"$config_dir/config.toml" <<TOML
# Generated by e2e/cluster: a private containerd for the local cluster.
version = 2
root = "$state_dir/root"
state = "$config_dir/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$state_dir/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This VM lacks CAP_SYS_RESOURCE: a negative oom_score_adj for the sandbox fails in runc.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "${RUNC_ROOT:-$RUN_DIR/runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CNI_CONF_DIR"
TOML
}

start_containerd() {
	running containerd && return 0
	write_containerd_config
	start_process containerd containerd --config "$RUN_DIR/containerd/config.toml"
	# Generous: under heavy disk load containerd's metadata database opens slowly.
	wait_until 120 "containerd" ctr --address "$CONTAINERD_SOCK" version ||
		die "containerd did not start; see $LOG_DIR/containerd.log"
}

# nodus finds the node's IP itself (the default route's interface), as the kubelet does;
# the e2e tests check it against the harness's own lookup. NODUS_EXTRA_ARGS (split on
# spaces) adds flags, for tests that need a differently configured agent for a while.
start_nodus() {
	running nodus && return 0
	mkdir -p "$MANIFEST_DIR"
	# With several nodes the first one's address is on the nodes' bridge (lib/nodes.sh).
	local multi_node=()
	[ "$(node_count)" -gt 1 ] && multi_node=(--node-ip "$(first_node_ip)")
	# shellcheck disable=SC2086,SC2046 # NODUS_EXTRA_ARGS and dns_flags are lists of flags
	start_process nodus "$NODUS_BIN" \
		--kubeconfig "$NODE_KUBECONFIG" \
		--container-runtime-endpoint "unix://$CONTAINERD_SOCK" \
		--root-dir "$NODUS_ROOT" \
		--cni-conf-dir "$CNI_CONF_DIR" \
		--pod-logs-dir "$STATE_DIR/pod-logs" \
		--cluster-cidr "$CLUSTER_CIDR" \
		--client-ca-file "$PKI_DIR/ca.crt" \
		--pod-manifest-path "$MANIFEST_DIR" \
		"${multi_node[@]}" $(dns_flags) -v 2 ${NODUS_EXTRA_ARGS:-}
}

# nodus-control with its own identity and the least-privilege RBAC it ships
# (control/deploy/rbac.yaml). Its node IPAM gives the node its pod CIDR (the first /24 of the cluster
# CIDR, which is $POD_CIDR), which nodus then takes from the Node. It signs CSRs with the
# cluster CA, as kube-controller-manager does in kubeadm clusters.
start_control() {
	running nodus-control && return 0
	# --controllers as kubeadm sets it: the bootstrap signer and token cleaner are off by default.
	start_process nodus-control "$CONTROL_BIN" --kubeconfig "$CONTROL_KUBECONFIG" \
		--controllers '*,bootstrapsigner,tokencleaner' \
		--root-ca-file "$PKI_DIR/ca.crt" \
		--allocate-node-cidrs --cluster-cidr "$CLUSTER_CIDR" --node-cidr-mask-size 24 \
		--cluster-signing-cert-file "$PKI_DIR/ca.crt" --cluster-signing-key-file "$PKI_DIR/ca.key" \
		--node-monitor-grace-period "$NODE_MONITOR_GRACE" -v 2
}

node_ready() {
	[ "$(kc get node "$(node_name)" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# remove_pods: stops and removes every pod sandbox through CRI, so that the runtime tears
# down their network namespaces and IP allocations itself.
remove_pods() { remove_pods_of containerd; }

# remove_pods_of NAME: the same for the containerd started as NAME (at $CONTAINERD_SOCK).
remove_pods_of() {
	running "$1" || return 0
	local crictl=(crictl --runtime-endpoint "unix://$CONTAINERD_SOCK" --image-endpoint "unix://$CONTAINERD_SOCK" --timeout 30s)
	local pods
	pods=$("${crictl[@]}" pods -q 2>/dev/null) || return 0
	[ -n "$pods" ] || return 0
	log "removing $(wc -w <<<"$pods") pod sandbox(es)"
	# shellcheck disable=SC2086
	"${crictl[@]}" stopp $pods >/dev/null 2>&1 || true
	# shellcheck disable=SC2086
	"${crictl[@]}" rmp -f $pods >/dev/null 2>&1 || true
}

# kill_leftover_shims: shims of our containerd outlive it by design; they are ours when
# their -address names our socket.
kill_leftover_shims() {
	local pid
	for pid in $(pgrep -f "containerd-shim.*-address $CONTAINERD_SOCK" || true); do
		kill -KILL "$pid" 2>/dev/null || true
	done
}

# remove_cgroups ROOT: kills what is left in each controller's ROOT cgroup and removes it.
remove_cgroups() {
	local root=$1 dir
	for dir in /sys/fs/cgroup/*/"$root" /sys/fs/cgroup/unified/"$root"; do
		[ -d "$dir" ] || continue
		find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
		find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
	done
}

# unmount_under DIR...: lazily unmounts every mount below DIR, deepest first.
unmount_under() {
	local dir mnt
	for dir in "$@"; do
		awk -v d="$dir" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r |
			while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done
	done
}

# remove_portmap_rules: the CNI portmap plugin (hostPort) leaves its CNI-* chains in the
# iptables nat table; drop them, and the table itself if nothing else is in it.
remove_portmap_rules() {
	local cmd family
	for cmd in iptables ip6tables; do
		command -v "$cmd-save" >/dev/null || continue
		family=ip
		[ "$cmd" = ip6tables ] && family=ip6
		nft list table "$family" nat >/dev/null 2>&1 || continue
		if "$cmd-save" -t nat | grep -q 'CNI-'; then
			"$cmd-save" -t nat | grep -v -e '-j CNI-' -e '^-A CNI-' -e '^:CNI-' | "$cmd-restore" -T nat
		fi
		# A table holding only empty base chains is what iptables left after our rules.
		if ! "$cmd" -t nat -S | grep -qv '^-P '; then
			nft delete table "$family" nat
		fi
	done
}

remove_network() {
	ip link show cni0 >/dev/null 2>&1 && ip link delete cni0
	nft list table inet nodus >/dev/null 2>&1 && nft delete table inet nodus
	remove_portmap_rules
	rm -f /var/lib/cni/results/nodus-* 2>/dev/null || true
	# libcni creates its cache directory on first use; drop it only if nothing else uses it.
	rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null || true
	return 0
}

# remove_stale_shim_sockets: containerd 1.6 puts shim sockets in /run/containerd/s
# whatever its root; drop those nothing listens on any more.
remove_stale_shim_sockets() {
	[ -d /run/containerd/s ] || return 0
	local live sock
	live=$(ss -xlH 2>/dev/null | awk '{print $5}')
	for sock in /run/containerd/s/*; do
		[ -S "$sock" ] || continue
		grep -qF "$sock" <<<"$live" || rm -f "$sock"
	done
	rmdir /run/containerd/s /run/containerd 2>/dev/null || true
}

# leftovers: prints anything of the cluster's that is still on the machine, one per line.
leftovers() {
	pgrep -af -- "$RUN_DIR|$STATE_DIR|$CLUSTER_DIR" | grep -v -e pgrep -e 'cluster check-clean' | sed 's/^/process: /' || true
	awk -v r="$RUN_DIR" -v s="$STATE_DIR" 'index($2, r) == 1 || index($2, s) == 1 {print "mount: " $2}' /proc/self/mounts
	ip link show cni0 >/dev/null 2>&1 && echo "link: cni0"
	extra_leftovers
	nft list table inet nodus >/dev/null 2>&1 && echo "nft table: inet nodus"
	stock_leftovers
	iptables-save -t nat 2>/dev/null | grep -q 'CNI-' && echo "iptables: CNI-* chains in the nat table"
	local dir
	for dir in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods "$STATE_DIR" "$RUN_DIR"; do
		[ -e "$dir" ] && echo "path: $dir"
	done
	ls /var/lib/cni/results/nodus-* 2>/dev/null | sed 's/^/cni result: /'
	return 0
}

source "$E2E_DIR/lib/nodes.sh"
source "$E2E_DIR/lib/stock_agent.sh"
