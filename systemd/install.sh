#!/usr/bin/env bash
# systemd/install.sh [--binary PATH] [--root DIR] [--replace-kubelet] [--no-reload]:
# puts nodus and its systemd units in place on a systemd host.
#
#   --binary PATH      the nodus binary (default: target/release/nodus of this checkout)
#   --root DIR         install under DIR instead of / (for packaging and tests)
#   --replace-kubelet  also install the kubelet.service drop-in that runs nodus instead of the
#                      kubelet (kubeadm nodes); without it, nodus.service is installed alone
#   --no-reload        do not run `systemctl daemon-reload`
#
# Files: /usr/local/bin/nodus, /etc/systemd/system/nodus.service, /etc/default/nodus (kept
# if present), /etc/systemd/system/kubelet.service.d/20-nodus.conf (--replace-kubelet), and
# /etc/systemd/system/containerd.service when the system has no containerd unit. Nothing is
# enabled or started: the script prints the command that does it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
binary=$here/../target/release/nodus
root=/
replace_kubelet=0
reload=1
usage() {
	sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2
	exit 2
}
while [ $# -gt 0 ]; do
	case "$1" in
	--binary) [ $# -ge 2 ] || usage; binary=$2; shift 2 ;;
	--root) [ $# -ge 2 ] || usage; root=$2; shift 2 ;;
	--replace-kubelet) replace_kubelet=1; shift ;;
	--no-reload) reload=0; shift ;;
	-h | --help) usage ;;
	*) usage ;;
	esac
done
[ -x "$binary" ] || { echo "install.sh: no nodus binary at $binary (cargo build --release, or --binary)" >&2; exit 1; }
root=${root%/}

install -D -m 0755 "$binary" "$root/usr/local/bin/nodus"
install -D -m 0644 "$here/nodus.service" "$root/etc/systemd/system/nodus.service"
if [ ! -e "$root/etc/default/nodus" ]; then
	install -D -m 0644 "$here/nodus.default" "$root/etc/default/nodus"
fi
if [ "$replace_kubelet" = 1 ]; then
	install -D -m 0644 "$here/kubelet.service.d/20-nodus.conf" \
		"$root/etc/systemd/system/kubelet.service.d/20-nodus.conf"
fi
have_containerd_unit=0
for dir in /etc/systemd/system /lib/systemd/system /usr/lib/systemd/system; do
	[ -e "$root$dir/containerd.service" ] && have_containerd_unit=1
done
if [ "$have_containerd_unit" = 0 ]; then
	install -D -m 0644 "$here/containerd.service" "$root/etc/systemd/system/containerd.service"
fi

# (An empty $root is /.) Only a running systemd has units to reload.
if [ "$reload" = 1 ] && [ -z "$root" ] && [ -d /run/systemd/system ]; then
	systemctl daemon-reload
fi
if [ "$replace_kubelet" = 1 ]; then
	echo "installed; run: systemctl daemon-reload && systemctl restart kubelet"
else
	echo "installed; run: systemctl daemon-reload && systemctl enable --now nodus"
fi
