#!/usr/bin/env python3
"""Write an OCI image-layout tarball from a root filesystem directory.

The result imports with `ctr images import` under the name given, without any registry:
index.json carries the name in both `io.containerd.image.name` and
`org.opencontainers.image.ref.name`. The layer is deterministic (sorted entries, fixed
times and owners), so the same inputs give the same image digest.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import sys
import tarfile

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def layer_tar(rootfs: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                path = os.path.join(dirpath, name)
                info = tar.gettarinfo(path, arcname=os.path.relpath(path, rootfs))
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = 0
                if info.isfile():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def blob(tar: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rootfs", required=True)
    p.add_argument("--name", action="append", required=True, help="full reference; repeat for more tags")
    p.add_argument("--entrypoint", default="[]", help="JSON list")
    p.add_argument("--cmd", default="[]", help="JSON list")
    p.add_argument("--env", action="append", default=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    p.add_argument("--user", default="")
    p.add_argument("--output", required=True)
    args = p.parse_args()

    raw_layer = layer_tar(args.rootfs)
    layer = gzip.compress(raw_layer, mtime=0)
    config = {
        "architecture": ARCH,
        "os": "linux",
        "config": {"Env": args.env, "Entrypoint": json.loads(args.entrypoint) or None,
                   "Cmd": json.loads(args.cmd) or None, "User": args.user, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw_layer).hexdigest()]},
        "history": [{"created_by": "nodus e2e/images/build"}],
    }
    config["config"] = {k: v for k, v in config["config"].items() if v is not None}
    config_bytes = json.dumps(config, sort_keys=True).encode()

    with tarfile.open(args.output, mode="w") as out:
        layer_digest = blob(out, layer)
        config_digest = blob(out, config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": len(config_bytes)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest, "size": len(layer)}],
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
        manifest_digest = blob(out, manifest_bytes)
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
                 "size": len(manifest_bytes), "platform": {"architecture": ARCH, "os": "linux"},
                 "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name}}
                for name in args.name
            ],
        }
        for name, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                           ("index.json", json.dumps(index, sort_keys=True).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    print(f"{args.output}: {', '.join(args.name)} ({manifest_digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
