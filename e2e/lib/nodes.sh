# Extra nodes for `e2e/cluster up --nodes N`: node k (2..N) lives in the network namespace
# nodus-node-k with its own containerd, state directories and nodus, joined to the cluster
# through `nodus join` with a bootstrap token (discovery, TLS bootstrap, approved CSR). One
# L2 network connects them, as a switch connects VMs: a bridge in a network namespace of its
# own ($NODES_SWITCH), with a veth port for each node; the host (the first node) is
# $NODES_NET.1 on its port ($NODES_LINK), node k is $NODES_NET.k, and in this mode the first
# node uses that address as its node IP too, so that every node reaches every other directly
# (host-gateway pod routes need that). Nothing leaves the machine.
#
# Why not a bridge in the host's namespace: br_netfilter (built in here, and on in every
# namespace) runs the host's nftables hooks on frames the bridge forwards, and a packet the
# host DNATs to an address behind the same bridge is then bridged straight on, skipping the
# host's forward and postrouting: a NodePort connection from a pod on node k to the first
# node, sent to an endpoint on node k, lost its masquerade and died. A real switch has no
# netfilter; the switch namespace turns bridge-nf-call-* off for its bridge alone.

NODES_SWITCH=nodus-switch
NODES_LINK=nodus-nodes
NODES_NET=10.250.0
# How many nodes the cluster has (absent: one).
NODES_FILE=$RUN_DIR/node-count
JOIN_TOKEN_FILE=$CLUSTER_DIR/join-token

node_count() { cat "$NODES_FILE" 2>/dev/null || echo 1; }
extra_node_name() { echo "$(node_name)-$1"; }
extra_netns() { echo "nodus-node-$1"; }
extra_state() { echo "$STATE_DIR/nodes/$1"; }
extra_run() { echo "$RUN_DIR/nodes/$1"; }
extra_sock() { echo "$(extra_run "$1")/containerd/containerd.sock"; }

# The first node's address: on the nodes' bridge with several nodes, else the default route's.
first_node_ip() {
	if [ "$(node_count)" -gt 1 ]; then echo "$NODES_NET.1"; else node_ip; fi
}

# Node K's processes enter its network namespace only, with nsenter: `ip netns exec` also
# makes a mount namespace with a fresh /sys, which hides the cgroup mounts runc needs.
netns_path() { echo "/run/netns/$(extra_netns "$1")"; }

setup_nodes_bridge() {
	ip link show "$NODES_LINK" >/dev/null 2>&1 && return 0
	ip netns list | grep -qw "$NODES_SWITCH" || ip netns add "$NODES_SWITCH"
	local key
	for key in iptables ip6tables arptables; do
		ip netns exec "$NODES_SWITCH" sysctl -qw "net.bridge.bridge-nf-call-$key=0"
	done
	ip -n "$NODES_SWITCH" link add br0 type bridge
	ip -n "$NODES_SWITCH" link set br0 up
	ip link add "$NODES_LINK" type veth peer name n1 netns "$NODES_SWITCH"
	ip -n "$NODES_SWITCH" link set n1 master br0 up
	ip addr add "$NODES_NET.1/24" dev "$NODES_LINK"
	ip link set "$NODES_LINK" up
	sysctl -qw net.ipv4.ip_forward=1
}

setup_node_netns() {
	local k=$1 ns
	ns=$(extra_netns "$k")
	ip netns list | grep -qw "$ns" && return 0
	ip netns add "$ns"
	ip link add "n$k" netns "$NODES_SWITCH" type veth peer name eth0 netns "$ns"
	ip -n "$NODES_SWITCH" link set "n$k" master br0 up
	ip -n "$ns" addr add "$NODES_NET.$k/24" dev eth0
	ip -n "$ns" link set eth0 up
	ip -n "$ns" link set lo up
	ip -n "$ns" route add default via "$NODES_NET.1"
	ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
}

# create_join_token: a bootstrap token as `kubeadm token create` makes it; prints id.secret.
create_join_token() {
	if [ -f "$JOIN_TOKEN_FILE" ]; then
		cat "$JOIN_TOKEN_FILE"
		return 0
	fi
	local id secret expiration
	# Hex digits are within the token alphabet ([a-z0-9]) and always the full length.
	id=$(openssl rand -hex 3)
	secret=$(openssl rand -hex 8)
	expiration=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
	# Every value quoted: an unquoted hex id such as 123456 or 1e5678 is a YAML number,
	# which the API server refuses for stringData.
	kc apply -f - >/dev/null <<YAML || die "could not create the bootstrap token secret"
apiVersion: v1
kind: Secret
metadata: {name: bootstrap-token-$id, namespace: kube-system}
type: bootstrap.kubernetes.io/token
stringData:
  token-id: "$id"
  token-secret: "$secret"
  expiration: "$expiration"
  usage-bootstrap-authentication: "true"
  usage-bootstrap-signing: "true"
  auth-extra-groups: "system:bootstrappers:kubeadm:default-node-token"
YAML
	echo "$id.$secret" >"$JOIN_TOKEN_FILE"
	cat "$JOIN_TOKEN_FILE"
}

token_signed() {
	[ -n "$(kc get configmap cluster-info -n kube-public -o jsonpath="{.data.jws-kubeconfig-$1}" 2>/dev/null)" ]
}

# The CA pin `kubeadm join --discovery-token-ca-cert-hash` takes.
ca_cert_hash() {
	echo "sha256:$(openssl x509 -pubkey -noout -in "$PKI_DIR/ca.crt" |
		openssl pkey -pubin -outform der | sha256sum | cut -d' ' -f1)"
}

start_extra_containerd() {
	local k=$1 state run
	state=$(extra_state "$k")
	run=$(extra_run "$k")
	running "containerd-$k" && return 0
	CONTAINERD_CONFIG_DIR=$run/containerd CONTAINERD_STATE_DIR=$state/containerd \
		CONTAINERD_SOCK=$(extra_sock "$k") CNI_CONF_DIR=$state/cni/net.d RUNC_ROOT=$run/runc \
		write_containerd_config
	start_process "containerd-$k" nsenter --net="$(netns_path "$k")" containerd --config "$run/containerd/config.toml"
	wait_until 120 "containerd of node $k" ctr --address "$(extra_sock "$k")" version ||
		die "containerd of node $k did not start; see $LOG_DIR/containerd-$k.log"
	CONTAINERD_SOCK=$(extra_sock "$k") import_images
}

# start_extra_nodus K: the first start joins (`nodus join`); later ones restart the agent
# with what the join wrote.
start_extra_nodus() {
	local k=$1 state name
	state=$(extra_state "$k")
	name=$(extra_node_name "$k")
	running "nodus-$k" && return 0
	mkdir -p "$state/manifests"
	# The join writes the cluster's kubelet-config to --config (and the CA to pki/ca.crt
	# beside the bootstrap kubeconfig); flags given here override the file.
	local flags=(
		--config "$state/kubelet-config.yaml"
		--kubeconfig "$state/kubelet.conf" --bootstrap-kubeconfig "$state/bootstrap-kubelet.conf"
		--cert-dir "$state/pki" --rotate-certificates
		--hostname-override "$name" --node-ip "$NODES_NET.$k"
		--container-runtime-endpoint "unix://$(extra_sock "$k")"
		--root-dir "$state/nodus" --cni-conf-dir "$state/cni/net.d" --pod-logs-dir "$state/pod-logs"
		--cluster-cidr "$CLUSTER_CIDR" --client-ca-file "$PKI_DIR/ca.crt"
		--pod-manifest-path "$state/manifests" -v 2
	)
	# shellcheck disable=SC2207 # dns_flags is a list of flags
	flags+=($(dns_flags))
	if [ -f "$state/kubelet.conf" ]; then
		start_process "nodus-$k" nsenter --net="$(netns_path "$k")" "$NODUS_BIN" "${flags[@]}"
	else
		start_process "nodus-$k" nsenter --net="$(netns_path "$k")" "$NODUS_BIN" join \
			"https://$(node_ip):$APISERVER_PORT" --token "$(create_join_token)" \
			--discovery-token-ca-cert-hash "$(ca_cert_hash)" "${flags[@]}"
	fi
}

extra_node_ready() {
	[ "$(kc get node "$(extra_node_name "$1")" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# up_extra_nodes N: nodes 2..N, started side by side and waited for together.
up_extra_nodes() {
	local count=$1 k
	[ "$count" -gt 1 ] || return 0
	setup_nodes_bridge
	for k in $(seq 2 "$count"); do
		setup_node_netns "$k"
		log "starting containerd of node $k"
		start_extra_containerd "$k"
	done
	# As after `kubeadm token create`: joining waits for the bootstrap signer's signature.
	local token
	token=$(create_join_token)
	wait_until 60 "cluster-info signed for the join token" token_signed "${token%%.*}" ||
		die "nodus-control did not sign cluster-info for the join token; see $LOG_DIR/nodus-control.log"
	for k in $(seq 2 "$count"); do
		log "joining node $k ($(extra_node_name "$k"))"
		start_extra_nodus "$k"
	done
	for k in $(seq 2 "$count"); do
		wait_until 180 "node/$(extra_node_name "$k") to be Ready" extra_node_ready "$k" ||
			die "node/$(extra_node_name "$k") is not Ready; see $LOG_DIR/nodus-$k.log"
	done
}

# stop_extra_node K: its agent and runtime stop, its pods are removed (the node is gone).
stop_extra_node() {
	local k=$1 sock
	sock=$(extra_sock "$k")
	stop_process "nodus-$k" 10
	CONTAINERD_SOCK=$sock remove_pods_of "containerd-$k"
	stop_process "containerd-$k" 10
	CONTAINERD_SOCK=$sock kill_leftover_shims
}

down_extra_nodes() {
	local k ns
	for k in $(seq 2 "$(node_count)"); do
		stop_extra_node "$k"
	done
	for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^nodus-node-/ {print $1}'); do
		ip netns delete "$ns"
	done
	# The switch's namespace takes the bridge and every port with it, the host's included.
	ip netns list 2>/dev/null | grep -qw "$NODES_SWITCH" && ip netns delete "$NODES_SWITCH"
	ip link show "$NODES_LINK" >/dev/null 2>&1 && ip link delete "$NODES_LINK"
	rm -f "$NODES_FILE" "$JOIN_TOKEN_FILE"
	return 0
}

extra_leftovers() {
	ip netns list 2>/dev/null | awk -v switch="$NODES_SWITCH" '$1 ~ /^nodus-node-/ || $1 == switch {print "netns: " $1}'
	ip link show "$NODES_LINK" >/dev/null 2>&1 && echo "link: $NODES_LINK"
	return 0
}
