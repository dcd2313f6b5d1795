# The stock node agents in nodus's place: the upstream kubelet and kube-proxy (nftables
# mode) of the pinned release, on the same containerd, with the same node identity, for
# side-by-side benchmarks (`e2e/cluster up --agent stock`, `e2e/bench`); `--agent
# stock-iptables` runs kube-proxy in iptables mode instead, the service benchmark's second
# reference. Sourced.
#
# What this VM needs of them is configuration only (nothing is patched):
#   - cgroups are v1 and the systemd driver cannot work: cgroupDriver cgroupfs and
#     failCgroupV1 false (1.35+ refuses v1 by default);
#   - the VM lacks CAP_SYS_RESOURCE, so the kubelet cannot lower its own oom_score_adj:
#     oomScoreAdj 0 (containerd already clamps the containers' scores, see
#     write_containerd_config);
#   - swap is not checked (failSwapOn false) and kube-proxy leaves the conntrack sysctls
#     alone (maxPerCore 0), as in a kind node;
#   - the hard eviction thresholds are nodus's (no imagefs signal), so that a full shared
#     disk does not make one agent evict and the other not;
#   - nothing writes a CNI configuration for the kubelet (nodus writes its own): the harness
#     writes the same bridge + host-local network for the node's pod CIDR.

KUBELET_ROOT=$STATE_DIR/kubelet
KUBE_PROXY_TABLE=kube-proxy

# The agent the cluster runs: nodus (default), stock (kubelet + kube-proxy in nftables mode)
# or stock-iptables (the same with kube-proxy in iptables mode, a second reference).
AGENT_FILE=$RUN_DIR/agent
cluster_agent() { cat "$AGENT_FILE" 2>/dev/null || echo nodus; }
stock_agent() { [ "$(cluster_agent)" != nodus ]; }
agent_components() {
	if stock_agent; then echo kubelet kube-proxy; else echo nodus; fi
}

write_stock_cni_config() {
	mkdir -p "$CNI_CONF_DIR"
	cat >"$CNI_CONF_DIR/10-stock.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "stock",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$STATE_DIR/cni-ipam",
        "ranges": [[{ "subnet": "$POD_CIDR" }]], "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
JSON
}

start_kubelet() {
	running kubelet && return 0
	mkdir -p "$KUBELET_ROOT" "$STATE_DIR/pod-logs" "$MANIFEST_DIR"
	write_stock_cni_config
	cat >"$RUN_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI_DIR/ca.crt
authorization:
  mode: Webhook
clusterDomain: cluster.local
$(dns_enabled && echo "clusterDNS: [$DNS_IP]")
# The hard eviction thresholds nodus uses by default; the kubelet's own defaults also watch
# imagefs.available (< 15%), which nodus does not, and would evict on a disk both share.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 10%
  nodefs.inodesFree: 5%
  imagefs.available: 0%
podLogsDir: $STATE_DIR/pod-logs
staticPodPath: $MANIFEST_DIR
YAML
	start_process kubelet kubelet \
		--config "$RUN_DIR/kubelet.yaml" \
		--kubeconfig "$NODE_KUBECONFIG" \
		--root-dir "$KUBELET_ROOT" \
		--cert-dir "$KUBELET_ROOT/pki" \
		--hostname-override "$(node_name)" \
		--node-ip "$(node_ip)" \
		--v 1
}

start_kube_proxy() {
	running kube-proxy && return 0
	cat >"$RUN_DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $NODE_KUBECONFIG
mode: $([ "$(cluster_agent)" = stock-iptables ] && echo iptables || echo nftables)
clusterCIDR: $CLUSTER_CIDR
hostnameOverride: $(node_name)
bindAddress: $(node_ip)
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
YAML
	# kube-proxy's iptables mode turns on route_localnet (for NodePorts on 127.0.0.1); what it
	# was is put back when the cluster goes down.
	[ -f "$RUN_DIR/route_localnet" ] || sysctl -n net.ipv4.conf.all.route_localnet >"$RUN_DIR/route_localnet"
	start_process kube-proxy kube-proxy --config "$RUN_DIR/kube-proxy.yaml" --v 2
}

# start_agent: the cluster's node agent(s).
start_agent() {
	if stock_agent; then
		start_kubelet
		start_kube_proxy
	else
		start_nodus
	fi
}

stop_stock_agent() {
	stop_process kube-proxy 10
	stop_process kubelet 15
}

# remove_stock_network: kube-proxy's nftables tables, and the iptables chains the kubelet
# still makes (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT) with the tables they
# brought, when nothing else is in them.
remove_stock_network() {
	local family cmd table
	for family in ip ip6; do
		nft list table "$family" "$KUBE_PROXY_TABLE" >/dev/null 2>&1 && nft delete table "$family" "$KUBE_PROXY_TABLE"
	done
	for cmd in iptables ip6tables; do
		command -v "$cmd-save" >/dev/null || continue
		family=ip
		[ "$cmd" = ip6tables ] && family=ip6
		for table in mangle filter nat; do
			nft list table "$family" "$table" >/dev/null 2>&1 || continue
			if "$cmd-save" -t "$table" | grep -q 'KUBE-'; then
				"$cmd-save" -t "$table" | grep -v -e '-j KUBE-' -e '^-A KUBE-' -e '^:KUBE-' | "$cmd-restore" -T "$table"
				"$cmd" -t "$table" -S | grep -qv '^-P ' || nft delete table "$family" "$table"
			fi
		done
	done
	if [ -f "$RUN_DIR/route_localnet" ]; then
		sysctl -qw "net.ipv4.conf.all.route_localnet=$(cat "$RUN_DIR/route_localnet")"
	fi
	rm -f "$CNI_CONF_DIR/10-stock.conflist" /var/lib/cni/results/stock-* 2>/dev/null || true
	return 0
}

stock_leftovers() {
	local family
	for family in ip ip6; do
		nft list table "$family" "$KUBE_PROXY_TABLE" >/dev/null 2>&1 && echo "nft table: $family $KUBE_PROXY_TABLE"
	done
	iptables-save 2>/dev/null | grep -q 'KUBE-' && echo "iptables: the kubelet's KUBE-* chains"
	ls /var/lib/cni/results/stock-* 2>/dev/null | sed 's/^/cni result: /'
	return 0
}
