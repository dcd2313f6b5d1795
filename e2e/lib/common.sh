# Shared settings and helpers of the e2e harness. Sourced, never run.
#
# One local cluster per machine: its system-wide state lives at fixed paths
# (/var/lib/nodus-e2e, /run/nodus-e2e), so any checkout can find and tear down a cluster
# that another checkout (or an interrupted run) left behind. Per-checkout files
# (kubeconfigs, PKI, logs) live in e2e/.cluster.

set -euo pipefail

# The upstream release the stock components are built at (also in e2e/stock/go.mod).
K8S_VERSION=v1.37.2

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_DIR=$(cd "$E2E_DIR/.." && pwd)
CLUSTER_DIR=$E2E_DIR/.cluster
PKI_DIR=$CLUSTER_DIR/pki
LOG_DIR=$CLUSTER_DIR/logs
ADMIN_KUBECONFIG=$CLUSTER_DIR/admin.kubeconfig
NODE_KUBECONFIG=$CLUSTER_DIR/node.kubeconfig
CONTROL_KUBECONFIG=$CLUSTER_DIR/control.kubeconfig
# The node's static pod manifests (kubeadm's /etc/kubernetes/manifests).
MANIFEST_DIR=$CLUSTER_DIR/manifests

STATE_DIR=/var/lib/nodus-e2e
RUN_DIR=/run/nodus-e2e
PID_DIR=$RUN_DIR/pids
CONTAINERD_SOCK=$RUN_DIR/containerd/containerd.sock
CNI_CONF_DIR=$STATE_DIR/cni/net.d
NODUS_ROOT=$STATE_DIR/nodus

CACHE_DIR=${NODUS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nodus}
STOCK_BIN=$CACHE_DIR/stock/$K8S_VERSION
TOOLS_BIN=$CACHE_DIR/tools
IMAGE_CACHE=$CACHE_DIR/images

# The agent as `cargo build` leaves it (CI may move cargo's target directory out of the clone).
NODUS_BIN=${NODUS_BIN:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/debug/nodus}
CONTROL_BIN=${CONTROL_BIN:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/debug/nodus-control}

CLUSTER_NAME=nodus-e2e
# The first /24 of CLUSTER_CIDR: what nodus-control's node IPAM gives the only node.
POD_CIDR=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
# How long a silent node stays Ready: shorter than upstream's 50 s so that the lifecycle
# tests end sooner, and still four missed 10 s lease renewals.
NODE_MONITOR_GRACE=40s
SERVICE_CIDR=10.96.0.0/16
FIRST_SERVICE_IP=10.96.0.1
APISERVER_PORT=6443
ETCD_CLIENT_PORT=2379
ETCD_PEER_PORT=2380

export PATH=$STOCK_BIN:$TOOLS_BIN:$PATH

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

require_root() {
	[ "$(id -u)" = 0 ] || die "the local cluster needs root (containerd, network, cgroups): run as root"
}

# The node's name as nodus derives it: the hostname, lower-cased.
node_name() { hostname | tr '[:upper:]' '[:lower:]'; }

# The IPv4 address on the interface of the default route, as nodus picks it.
node_ip() {
	local dev
	dev=$(ip -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
	if [ -n "$dev" ]; then
		ip -4 -o addr show dev "$dev" scope global | awk '{split($4, a, "/"); print a[1]; exit}'
	else
		ip -4 -o addr show scope global | awk '{split($4, a, "/"); print a[1]; exit}'
	fi
}

# kubectl of the pinned release with the admin credentials.
kc() { kubectl --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }

# wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_until() {
	local timeout=$1 what=$2
	shift 2
	local deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			warn "timed out after ${timeout}s waiting for $what"
			return 1
		fi
		sleep 0.5
	done
}

pid_of() {
	local file=$PID_DIR/$1.pid
	[ -f "$file" ] || return 1
	local pid
	pid=$(cat "$file")
	kill -0 "$pid" 2>/dev/null || return 1
	echo "$pid"
}

running() { pid_of "$1" >/dev/null; }

# start_process NAME COMMAND...: runs COMMAND in its own session, logging to
# $LOG_DIR/NAME.log, and records its PID.
start_process() {
	local name=$1
	shift
	mkdir -p "$PID_DIR" "$LOG_DIR"
	setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
	echo $! >"$PID_DIR/$name.pid"
}

# stop_process NAME [GRACE]: SIGTERM, then SIGKILL after GRACE seconds.
stop_process() {
	local name=$1 grace=${2:-10} pid
	if pid=$(pid_of "$name"); then
		kill -TERM "$pid" 2>/dev/null || true
		local deadline=$((SECONDS + grace))
		while kill -0 "$pid" 2>/dev/null; do
			if [ "$SECONDS" -ge "$deadline" ]; then
				warn "$name did not stop within ${grace}s; killing it"
				kill -KILL "$pid" 2>/dev/null || true
				# A process stuck in the kernel (slow disk under load) dies only when it
				# returns; a successor must not start before, or it finds its files locked.
				wait_until 120 "$name (pid $pid) to exit" sh -c "! kill -0 $pid 2>/dev/null" || true
				break
			fi
			sleep 0.1
		done
	fi
	rm -f "$PID_DIR/$name.pid"
}
