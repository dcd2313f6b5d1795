# Images built on this machine, since no registry can be reached, and imported into
# containerd under the names pods use: the pause image, busybox, agnhost, and the e2e suite's
# nonroot, nonewprivs, kitten, nautilus, nginx and (what its hostname specs need of)
# glibc-dns-testing.

# The names the pinned release uses: kubeadm's pause, and the upstream e2e suite's busybox
# tags beside Docker Hub's (`e2e.test --list-images`).
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2
BUSYBOX_IMAGES=(docker.io/library/busybox:1.36 docker.io/library/busybox:latest
	registry.k8s.io/e2e-test-images/busybox:1.37.0-2 registry.k8s.io/e2e-test-images/busybox:1.36.1-1)
# The names test/utils/image/manifest.go of the pinned release gives agnhost (checked when
# built), nonroot and nonewprivs.
AGNHOST_IMAGE=registry.k8s.io/e2e-test-images/agnhost:2.66.1
NONROOT_IMAGE=registry.k8s.io/e2e-test-images/nonroot:1.5
NONEWPRIVS_IMAGE=registry.k8s.io/e2e-test-images/nonewprivs:1.4
GLIBC_DNS_IMAGE=registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1
AGNHOST_PREV_IMAGE=registry.k8s.io/e2e-test-images/agnhost:2.55
KITTEN_IMAGE=registry.k8s.io/e2e-test-images/kitten:1.8
NAUTILUS_IMAGE=registry.k8s.io/e2e-test-images/nautilus:1.8
NGINX_IMAGES=(registry.k8s.io/e2e-test-images/nginx:1.27.0-2 registry.k8s.io/e2e-test-images/nginx:1.28.0-2)

source "$E2E_DIR/lib/dns.sh"

# image_key FILE...: a short hash of the inputs an image is built from.
image_key() { cat "$@" | sha256sum | cut -c1-16; }

build_pause_image() {
	local key out rootfs
	key=$(image_key "$E2E_DIR/images/pause.c" "$E2E_DIR/images/oci_image.py" <(echo "$PAUSE_IMAGE"))
	out=$IMAGE_CACHE/pause-$key.tar
	if [ ! -f "$out" ]; then
		rootfs=$(mktemp -d)
		gcc -Os -static -o "$rootfs/pause" "$E2E_DIR/images/pause.c"
		strip "$rootfs/pause"
		python3 "$E2E_DIR/images/oci_image.py" --rootfs "$rootfs" --name "$PAUSE_IMAGE" \
			--entrypoint '["/pause"]' --user 65535:65535 --output "$out.tmp" >/dev/null
		rm -rf "$rootfs"
		mv "$out.tmp" "$out"
	fi
	echo "$out"
}

# The busybox of upstream's test image, 1.37.0, built static with its default
# configuration from the source tarball Debian's archive serves (checked against its
# hash). Not Debian's busybox-static: a Debian patch makes its shell drop environment
# variables whose names are not shell names (`data-1`) from what its commands get, and the
# suite's ConfigMap and Secret environment specs print them with `sh -c env`.
BUSYBOX_VERSION=1.37.0
BUSYBOX_SOURCE=http://deb.debian.org/debian/pool/main/b/busybox/busybox_$BUSYBOX_VERSION.orig.tar.bz2
BUSYBOX_SOURCE_SHA256=3311dff32e746499f4df0d5df04d7eb396382d7e108bb9250e7b519b837043a4

# busybox_binary: the path of that busybox, built the first time (under a minute).
busybox_binary() {
	local out=$IMAGE_CACHE/busybox-$BUSYBOX_VERSION/busybox work
	if [ ! -x "$out" ]; then
		log "building busybox $BUSYBOX_VERSION from source (first time only)"
		work=$(mktemp -d)
		curl -fsSL --retry 3 -o "$work/source.tar.bz2" "$BUSYBOX_SOURCE" || return 1
		echo "$BUSYBOX_SOURCE_SHA256  $work/source.tar.bz2" | sha256sum -c --quiet || return 1
		tar -xjf "$work/source.tar.bz2" -C "$work" || return 1
		# Static, as upstream's image; traffic control off, as it no longer builds
		# against current kernel headers.
		(cd "$work/busybox-$BUSYBOX_VERSION" &&
			make defconfig >"$work/build.log" 2>&1 &&
			sed -i 's/^# CONFIG_STATIC is not set/CONFIG_STATIC=y/; s/^CONFIG_TC=y/# CONFIG_TC is not set/' .config &&
			make -j"$(nproc)" busybox >>"$work/build.log" 2>&1) || {
			tail -20 "$work/build.log" >&2
			return 1
		}
		mkdir -p "$(dirname "$out")"
		cp "$work/busybox-$BUSYBOX_VERSION/busybox" "$out.tmp"
		mv "$out.tmp" "$out"
		rm -rf "$work"
	fi
	echo "$out"
}

# busybox_rootfs DIR: upstream's static busybox (above) with its applets in /bin, root and
# nobody. Its shell stays busybox's: specs compare its exact error messages.
busybox_rootfs() {
	local rootfs=$1 applet busybox
	busybox=$(busybox_binary) || return 1
	mkdir -p "$rootfs"/{bin,etc,tmp,root,var/www,home}
	chmod 1777 "$rootfs/tmp"
	cp "$busybox" "$rootfs/bin/busybox"
	for applet in $("$busybox" --list); do
		[ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
	done
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' >"$rootfs/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
}

build_busybox_image() {
	local key out rootfs
	key=$(image_key "$(busybox_binary)" "$E2E_DIR/images/oci_image.py" <(echo "${BUSYBOX_IMAGES[@]}") <(declare -f busybox_rootfs))
	out=$IMAGE_CACHE/busybox-$key.tar
	if [ ! -f "$out" ]; then
		rootfs=$(mktemp -d)
		busybox_rootfs "$rootfs" || return 1
		python3 "$E2E_DIR/images/oci_image.py" --rootfs "$rootfs" $(printf -- '--name %s ' "${BUSYBOX_IMAGES[@]}") \
			--cmd '["sh"]' --output "$out.tmp" >/dev/null
		rm -rf "$rootfs"
		mv "$out.tmp" "$out"
	fi
	echo "$out"
}

# build_agnhost: the agnhost binary of the pinned release, static, built from the Go module
# proxy in its own module (e2e/images/agnhost) and cached with the stock binaries.
build_agnhost() {
	local mod=$E2E_DIR/images/agnhost src
	grep -q "k8s.io/kubernetes $K8S_VERSION" "$mod/go.mod" ||
		die "e2e/images/agnhost/go.mod does not require k8s.io/kubernetes $K8S_VERSION (e2e/lib/common.sh pins it)"
	if [ ! -x "$STOCK_BIN/agnhost" ]; then
		log "building agnhost $K8S_VERSION from the Go module proxy (first time only)"
		mkdir -p "$STOCK_BIN"
		(cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "$(go_ldflags)" \
			-o "$STOCK_BIN/agnhost.tmp" k8s.io/kubernetes/test/images/agnhost) >&2 || return 1
		mv "$STOCK_BIN/agnhost.tmp" "$STOCK_BIN/agnhost"
	fi
	src=$(cd "$mod" && go list -m -f '{{.Dir}}' k8s.io/kubernetes) || return 1
	grep -q "configs\[Agnhost\] = Config{list.PromoterE2eRegistry, \"agnhost\", \"${AGNHOST_IMAGE##*:}\"}" \
		"$src/test/utils/image/manifest.go" ||
		die "AGNHOST_IMAGE ($AGNHOST_IMAGE) is not the agnhost of $K8S_VERSION's test/utils/image/manifest.go"
	echo "$src"
}

# copy_with_libraries BINARY ROOTFS: the dynamically linked BINARY and every library ldd
# resolves for it (and the loader), at the same paths under ROOTFS.
copy_with_libraries() {
	local binary=$1 rootfs=$2 lib
	# Replace, never write through, a busybox applet link of the same name.
	rm -f "$rootfs$binary"
	install -D "$binary" "$rootfs$binary" || return 1
	for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
		install -D "$(readlink -f "$lib")" "$rootfs$lib" || return 1
	done
}

# registry_from_oci TARBALL DIR TAG: the OCI image in TARBALL laid out for agnhost's
# fake-registry-server (upstream's prepare_registry.sh does the same from registry.k8s.io):
# DIR/manifests/TAG names the manifest's digest, and manifests and blobs sit at
# DIR/{manifests,blobs}/sha256/<first two hex>/<hash>/data.
registry_from_oci() {
	local tarball=$1 dir=$2 tag=$3 tmp blob hash manifest
	tmp=$(mktemp -d)
	tar -xf "$tarball" -C "$tmp" || return 1
	manifest=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$tmp/index.json") || return 1
	mkdir -p "$dir/manifests"
	echo "$manifest" >"$dir/manifests/$tag"
	for blob in "$tmp"/blobs/sha256/*; do
		hash=${blob##*/}
		install -D -m 0644 "$blob" "$dir/blobs/sha256/${hash:0:2}/$hash/data"
	done
	hash=${manifest#sha256:}
	install -D -m 0644 "$tmp/blobs/sha256/$hash" "$dir/manifests/sha256/${hash:0:2}/$hash/data"
	rm -rf "$tmp"
}

# agnhost_rootfs DIR SRC PAUSE: upstream's agnhost layout (/agnhost, /agnhost-2, /uploads,
# porter's localhost.crt and key from SRC, user-defined-in-image:1000 in
# group-defined-in-image:50000) with busybox's applets in /bin instead of alpine's tools, and
# Debian's curl, bash, OpenBSD netcat, dig and glibc's getent, which upstream's image adds
# too (hook tests run `curl`, probe tests `/bin/bash -c`, networking tests `nc -u`, DNS tests
# `dig` and `getent hosts`; busybox has none of them).
agnhost_rootfs() {
	local rootfs=$1 src=$2 pause=$3 applet
	mkdir -p "$rootfs"/{bin,etc,tmp,root,uploads,home/user-defined-in-image}
	chmod 1777 "$rootfs/tmp"
	cp "$STOCK_BIN/agnhost" "$rootfs/agnhost"
	ln -s agnhost "$rootfs/agnhost-2"
	install -m 0644 "$src"/test/images/agnhost/porter/localhost.{crt,key} "$rootfs/" || return 1
	cp /bin/busybox "$rootfs/bin/busybox"
	for applet in $(/bin/busybox --list); do
		[ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
	done
	copy_with_libraries /usr/bin/curl "$rootfs" || return 1
	copy_with_libraries /bin/bash "$rootfs" || return 1
	copy_with_libraries /bin/nc.openbsd "$rootfs" || return 1
	ln -sf nc.openbsd "$rootfs/bin/nc"
	copy_with_libraries /usr/bin/dig "$rootfs" || return 1
	copy_with_libraries /usr/bin/getent "$rootfs" || return 1
	printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
	# Debian's busybox shell runs its own applets before anything on PATH (alpine's, in
	# upstream's image, does not), so `sh -c "nc -u ..."` would never reach netcat: the
	# image's sh is bash, which looks up PATH.
	ln -sf bash "$rootfs/bin/sh"
	# What fake-registry-server serves: the pause image as pause:testing, as upstream's
	# image carries it (the private-registry spec pulls it with credentials).
	registry_from_oci "$pause" "$rootfs/var/registry/pause" testing || return 1
	printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/home:/bin/false' \
		'user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh' >"$rootfs/etc/passwd"
	printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' 'user-defined-in-image:x:1000:' \
		'group-defined-in-image:x:50000:user-defined-in-image' >"$rootfs/etc/group"
}

# build_agnhost_image: agnhost under the pinned release's name and, for the specs that
# switch a pod from the previous agnhost to the current one (StatefulSet fixtures, pod
# updates), also under AgnhostPrev's: the same build, as only the name must differ.
build_agnhost_image() {
	local src pause key out rootfs
	# Called through $(...), where bash drops errexit: failures are passed on by hand.
	src=$(build_agnhost) || return 1
	pause=$(build_pause_image) || return 1
	key=$(image_key "$STOCK_BIN/agnhost" /bin/busybox /usr/bin/curl /bin/bash /bin/nc.openbsd /usr/bin/dig /usr/bin/getent "$pause" "$E2E_DIR/images/oci_image.py" <(declare -f build_agnhost_image agnhost_rootfs copy_with_libraries registry_from_oci; echo "$AGNHOST_PREV_IMAGE"))
	out=$IMAGE_CACHE/agnhost-$key.tar
	if [ ! -f "$out" ]; then
		rootfs=$(mktemp -d)
		agnhost_rootfs "$rootfs" "$src" "$pause" || return 1
		python3 "$E2E_DIR/images/oci_image.py" --rootfs "$rootfs" --name "$AGNHOST_IMAGE" --name "$AGNHOST_PREV_IMAGE" \
			--entrypoint '["/agnhost"]' --cmd '["pause"]' --output "$out.tmp" >/dev/null || return 1
		rm -rf "$rootfs"
		mv "$out.tmp" "$out"
	fi
	echo "$out"
}

# build_webserver_image NAME IMAGE: upstream's test/images/NAME (kitten, nautilus): agnhost
# serving its html/ (an image and data.json naming it) from / with `test-webserver`.
build_webserver_image() {
	local name=$1 image=$2 src pause key out rootfs
	src=$(build_agnhost) || return 1
	pause=$(build_pause_image) || return 1
	[ -f "$src/test/images/$name/html/data.json" ] || die "no test/images/$name/html in k8s.io/kubernetes $K8S_VERSION"
	key=$(image_key "$STOCK_BIN/agnhost" /bin/busybox /usr/bin/curl /bin/bash /bin/nc.openbsd /usr/bin/dig /usr/bin/getent "$pause" "$src/test/images/$name"/html/* "$E2E_DIR/images/oci_image.py" <(declare -f build_webserver_image agnhost_rootfs copy_with_libraries registry_from_oci; echo "$image"))
	out=$IMAGE_CACHE/$name-$key.tar
	if [ ! -f "$out" ]; then
		rootfs=$(mktemp -d)
		agnhost_rootfs "$rootfs" "$src" "$pause" || return 1
		install -m 0644 "$src/test/images/$name"/html/* "$rootfs/" || return 1
		python3 "$E2E_DIR/images/oci_image.py" --rootfs "$rootfs" --name "$image" \
			--entrypoint '["/agnhost"]' --cmd '["test-webserver"]' --output "$out.tmp" >/dev/null || return 1
		rm -rf "$rootfs"
		mv "$out.tmp" "$out"
	fi
	echo "$out"
}

# build_nginx_image: what the suite runs nginx for (a web server on :80 that serves a welcome
# page and logs to the container's output): Debian's nginx binary (downloaded with apt, never
# installed, so no nginx service starts on the node) with its libraries, on busybox, with
# upstream's defaults: master as root, workers as user nginx (101), `nginx -g 'daemon off;'`.
build_nginx_image() {
	local deb key out rootfs lib
	mkdir -p "$IMAGE_CACHE/debs"
	deb=$(ls "$IMAGE_CACHE"/debs/nginx_*.deb 2>/dev/null | tail -1)
	if [ -z "$deb" ]; then
		# The package lists may be older than the archive's current nginx: refresh once.
		(cd "$IMAGE_CACHE/debs" && { apt-get download -q nginx >&2 2>/dev/null ||
			{ apt-get update -qq && apt-get download -q nginx >&2 2>/dev/null; }; }) || return 1
		deb=$(ls "$IMAGE_CACHE"/debs/nginx_*.deb | tail -1)
	fi
	key=$(image_key "$deb" "$(busybox_binary)" "$E2E_DIR/images/oci_image.py" <(declare -f busybox_rootfs copy_with_libraries build_nginx_image; echo "${NGINX_IMAGES[@]}"))
	out=$IMAGE_CACHE/nginx-$key.tar
	if [ ! -f "$out" ]; then
		rootfs=$(mktemp -d)
		busybox_rootfs "$rootfs" || return 1
		dpkg-deb -x "$deb" "$rootfs.deb" || return 1
		install -D "$rootfs.deb/usr/sbin/nginx" "$rootfs/usr/sbin/nginx" || return 1
		for lib in $(ldd "$rootfs.deb/usr/sbin/nginx" | grep -o '/[^ ]*'); do
			install -D "$(readlink -f "$lib")" "$rootfs$lib" || return 1
		done
		rm -rf "$rootfs.deb"
		mkdir -p "$rootfs"/{var/log/nginx,var/lib/nginx,run,usr/share/nginx/html,etc/nginx}
		echo 'nginx:x:101:101:nginx:/var/lib/nginx:/bin/false' >>"$rootfs/etc/passwd"
		echo 'nginx:x:101:' >>"$rootfs/etc/group"
		printf '<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head>\n<body><h1>Welcome to nginx!</h1></body></html>\n' \
			>"$rootfs/usr/share/nginx/html/index.html"
		cat >"$rootfs/etc/nginx/nginx.conf" <<'CONF'
user nginx;
worker_processes 1;
error_log stderr notice;
pid /run/nginx.pid;
events { worker_connections 1024; }
http {
    types { text/html html htm; application/json json; image/jpeg jpg jpeg; text/plain txt; }
    default_type application/octet-stream;
    access_log /dev/stdout;
    server {
        listen 80;
        location / { root /usr/share/nginx/html; index index.html; }
    }
}
CONF
		python3 "$E2E_DIR/images/oci_image.py" --rootfs "$rootfs" $(printf -- '--name %s ' "${NGINX_IMAGES[@]}") \
			--cmd '["nginx", "-g", "daemon off;"]' --output "$out.tmp" >/dev/null || return 1
		rm -rf "$rootfs"
		mv "$out.tmp" "$out"
	fi
	echo "$out"
}

# build_nonroot_image: upstream's test/images/nonroot, busybox run as user 1234 by default.
build_nonroot_image() {
	local key out rootfs
	key=$(image_key "$(busybox_binary)" "$E2E_DIR/images/oci_image.py" <(declare -f busybox_rootfs build_nonroot_image; echo "$NONROOT_IMAGE"))
	out=$IMAGE_CACHE/nonroot-$key.tar
	if [ ! -f "$out" ]; then
		rootfs=$(mktemp -d)
		busybox_rootfs "$rootfs" || return 1
		python3 "$E2E_DIR/images/oci_image.py" --rootfs "$rootfs" --name "$NONROOT_IMAGE" \
			--user 1234 --cmd '["sh"]' --output "$out.tmp" >/dev/null || return 1
		rm -rf "$rootfs"
		mv "$out.tmp" "$out"
	fi
	echo "$out"
}

# build_glibc_dns_image: what the suite's hostname and DNS specs use of upstream's
# glibc-dns-testing (a Debian image with dnsutils and coredns): a shell, glibc's `hostname`
# (whose `-f` resolves through /etc/hosts as glibc does) and `getent`, and dig. Busybox for
# the rest; no coredns (the specs that run one in a pod still fail).
build_glibc_dns_image() {
	local key out rootfs
	key=$(image_key "$(busybox_binary)" /bin/hostname /usr/bin/dig /usr/bin/getent "$E2E_DIR/images/oci_image.py" <(declare -f busybox_rootfs copy_with_libraries build_glibc_dns_image; echo "$GLIBC_DNS_IMAGE"))
	out=$IMAGE_CACHE/glibc-dns-$key.tar
	if [ ! -f "$out" ]; then
		rootfs=$(mktemp -d)
		busybox_rootfs "$rootfs" || return 1
		copy_with_libraries /bin/hostname "$rootfs" || return 1
		copy_with_libraries /usr/bin/dig "$rootfs" || return 1
		copy_with_libraries /usr/bin/getent "$rootfs" || return 1
		printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
		python3 "$E2E_DIR/images/oci_image.py" --rootfs "$rootfs" --name "$GLIBC_DNS_IMAGE" \
			--cmd '["sh"]' --output "$out.tmp" >/dev/null || return 1
		rm -rf "$rootfs"
		mv "$out.tmp" "$out"
	fi
	echo "$out"
}

# build_nonewprivs_image: upstream's test/images/nonewprivs, busybox with a setuid-root `nnp`
# (built from the pinned release's source) that prints its effective uid.
build_nonewprivs_image() {
	local mod=$E2E_DIR/images/agnhost key out rootfs
	build_agnhost >/dev/null || return 1
	if [ ! -x "$STOCK_BIN/nnp" ]; then
		(cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "$(go_ldflags)" \
			-o "$STOCK_BIN/nnp.tmp" k8s.io/kubernetes/test/images/nonewprivs) >&2 || return 1
		mv "$STOCK_BIN/nnp.tmp" "$STOCK_BIN/nnp"
	fi
	key=$(image_key "$(busybox_binary)" "$STOCK_BIN/nnp" "$E2E_DIR/images/oci_image.py" <(declare -f busybox_rootfs build_nonewprivs_image; echo "$NONEWPRIVS_IMAGE"))
	out=$IMAGE_CACHE/nonewprivs-$key.tar
	if [ ! -f "$out" ]; then
		rootfs=$(mktemp -d)
		busybox_rootfs "$rootfs" || return 1
		install -D -m 4755 "$STOCK_BIN/nnp" "$rootfs/usr/local/bin/nnp"
		python3 "$E2E_DIR/images/oci_image.py" --rootfs "$rootfs" --name "$NONEWPRIVS_IMAGE" \
			--cmd '["nnp"]' --output "$out.tmp" >/dev/null || return 1
		rm -rf "$rootfs"
		mv "$out.tmp" "$out"
	fi
	echo "$out"
}

# import_images: builds (or reuses) the image tarballs and imports those containerd lacks.
import_images() {
	mkdir -p "$IMAGE_CACHE"
	local present tarball
	present=$(ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q)
	if ! grep -qx "$PAUSE_IMAGE" <<<"$present"; then
		tarball=$(build_pause_image)
		ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$tarball" >/dev/null
	fi
	if ! grep -qx "${BUSYBOX_IMAGES[0]}" <<<"$present"; then
		tarball=$(build_busybox_image)
		ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$tarball" >/dev/null
	fi
	if ! grep -qx "$AGNHOST_PREV_IMAGE" <<<"$present"; then
		tarball=$(build_agnhost_image)
		ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$tarball" >/dev/null
	fi
	if ! grep -qx "$NONROOT_IMAGE" <<<"$present"; then
		tarball=$(build_nonroot_image)
		ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$tarball" >/dev/null
	fi
	if ! grep -qx "$NONEWPRIVS_IMAGE" <<<"$present"; then
		tarball=$(build_nonewprivs_image)
		ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$tarball" >/dev/null
	fi
	if ! grep -qx "$GLIBC_DNS_IMAGE" <<<"$present"; then
		tarball=$(build_glibc_dns_image)
		ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$tarball" >/dev/null
	fi
	if ! grep -qx "$KITTEN_IMAGE" <<<"$present"; then
		tarball=$(build_webserver_image kitten "$KITTEN_IMAGE")
		ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$tarball" >/dev/null
	fi
	if ! grep -qx "$NAUTILUS_IMAGE" <<<"$present"; then
		tarball=$(build_webserver_image nautilus "$NAUTILUS_IMAGE")
		ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$tarball" >/dev/null
	fi
	if ! grep -qx "${NGINX_IMAGES[0]}" <<<"$present"; then
		tarball=$(build_nginx_image)
		ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$tarball" >/dev/null
	fi
	if dns_enabled && ! grep -qx "$COREDNS_IMAGE" <<<"$present"; then
		tarball=$(build_coredns_image)
		ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$tarball" >/dev/null
	fi
}
