# Installs what the harness needs from Debian, idempotently, and builds the stock
# components and tools from the Go module proxy into the cache (reused across runs).

PACKAGES=(
	containerd runc containernetworking-plugins nftables conntrack iproute2
	busybox-static etcd-server protobuf-compiler gcc libc6-dev curl openssl python3 kmod procps iptables
	netcat-openbsd bind9-dnsutils
	# The zoneinfo nodus-control reads for CronJob time zones.
	tzdata
)

# install_packages [PACKAGE]...: PACKAGES and any given (what one command alone needs).
install_packages() {
	local missing=() pkg
	for pkg in "${PACKAGES[@]}" "$@"; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing ${missing[*]}"
	apt-get update -qq
	# Packages may try to start services; there is no init system here to do so.
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

require_toolchains() {
	command -v go >/dev/null || die "go is required to build the stock components (not found on PATH)"
	command -v cargo >/dev/null || die "cargo is required to build nodus (not found on PATH)"
}

go_ldflags() {
	local minor=${K8S_VERSION#v1.}
	minor=${minor%%.*}
	echo "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION" \
		"-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" \
		"-X k8s.io/component-base/version.gitTreeState=clean"
}

# build_stock BINARY...: builds each missing cmd/BINARY of k8s.io/kubernetes at the pinned release.
build_stock() {
	grep -q "k8s.io/kubernetes $K8S_VERSION" "$E2E_DIR/stock/go.mod" ||
		die "e2e/stock/go.mod does not require k8s.io/kubernetes $K8S_VERSION (e2e/lib/common.sh pins it)"
	mkdir -p "$STOCK_BIN"
	local bin
	for bin in "$@"; do
		[ -x "$STOCK_BIN/$bin" ] && continue
		log "building stock $bin $K8S_VERSION from the Go module proxy (first time only)"
		(cd "$E2E_DIR/stock" && go build -trimpath -ldflags "$(go_ldflags)" -o "$STOCK_BIN/$bin.tmp" "k8s.io/kubernetes/cmd/$bin")
		mv "$STOCK_BIN/$bin.tmp" "$STOCK_BIN/$bin"
	done
}

build_tools() {
	mkdir -p "$TOOLS_BIN"
	if [ ! -x "$TOOLS_BIN/crictl" ]; then
		log "building crictl from the Go module proxy (first time only)"
		(cd "$E2E_DIR/tools" && go build -trimpath -o "$TOOLS_BIN/crictl.tmp" sigs.k8s.io/cri-tools/cmd/crictl)
		mv "$TOOLS_BIN/crictl.tmp" "$TOOLS_BIN/crictl"
	fi
}

build_nodus() {
	log "building nodus"
	(cd "$REPO_DIR" && cargo build --quiet -p nodus -p nodus-control --bins)
}

install_all() {
	install_packages
	require_toolchains
	build_stock kube-apiserver kubectl
	build_tools
	build_nodus
}
