# Images built on this machine, since no registry can be reached, and imported into
# containerd under the names pods use: the pause image and busybox.

PAUSE_IMAGE=registry.k8s.io/pause:3.10
BUSYBOX_IMAGES=(docker.io/library/busybox:1.36 docker.io/library/busybox:latest)

# image_key FILE...: a short hash of the inputs an image is built from.
image_key() { cat "$@" | sha256sum | cut -c1-16; }

build_pause_image() {
	local key out rootfs
	key=$(image_key "$E2E_DIR/images/pause.c" "$E2E_DIR/images/oci_image.py")
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

build_busybox_image() {
	local key out rootfs applet
	key=$(image_key /bin/busybox "$E2E_DIR/images/oci_image.py")
	out=$IMAGE_CACHE/busybox-$key.tar
	if [ ! -f "$out" ]; then
		rootfs=$(mktemp -d)
		mkdir -p "$rootfs"/{bin,etc,tmp,root,var/www,home}
		chmod 1777 "$rootfs/tmp"
		cp /bin/busybox "$rootfs/bin/busybox"
		for applet in $(/bin/busybox --list); do
			[ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
		done
		printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' >"$rootfs/etc/passwd"
		printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
		python3 "$E2E_DIR/images/oci_image.py" --rootfs "$rootfs" $(printf -- '--name %s ' "${BUSYBOX_IMAGES[@]}") \
			--cmd '["sh"]' --output "$out.tmp" >/dev/null
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
}
