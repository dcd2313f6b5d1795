//! CNI configuration: the bridge network that gives pods on this node their addresses.
//!
//! The runtime (containerd's CRI plugin) watches its CNI configuration directory and
//! reports `NetworkReady=false` until a configuration appears there, so writing this file
//! is what makes the node able to run pods. It is written atomically (a temporary file
//! renamed into place) so the runtime never loads half a file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::json;

/// The CNI specification version of the configuration we write.
const CNI_VERSION: &str = "0.4.0";

/// A bridge network for this node's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNetwork {
    /// The CNI network name; host-local keeps its allocations under this name.
    pub name: String,
    /// The Linux bridge the pods' veths attach to; it gets the subnet's first address.
    pub bridge: String,
    /// The node's pod CIDR.
    pub subnet: IpNet,
    /// Where host-local records its IP allocations (its default is /var/lib/cni/networks).
    pub ipam_data_dir: Option<PathBuf>,
}

/// An error writing CNI configuration, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing CNI configuration {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl BridgeNetwork {
    /// The file name under the CNI configuration directory. The `10-` prefix sorts it
    /// before anything a distribution may have left there, since runtimes use the first.
    pub fn file_name(&self) -> String {
        format!("10-{}.conflist", self.name)
    }

    /// The `.conflist` document: bridge (gateway and hairpin, so a pod can reach itself
    /// through a Service) with host-local IPAM, then portmap for `hostPort`.
    ///
    /// Masquerade is left to nodus's own nftables table: the bridge plugin's `ipMasq`
    /// would program iptables rules for every pod. portmap does use iptables (chains
    /// named `CNI-*`), but only for pods that ask for a host port.
    pub fn conflist(&self) -> serde_json::Value {
        let default_route = match self.subnet {
            IpNet::V4(_) => "0.0.0.0/0",
            IpNet::V6(_) => "::/0",
        };
        let mut ipam = json!({
            "type": "host-local",
            "ranges": [[{ "subnet": self.subnet.trunc().to_string() }]],
            "routes": [{ "dst": default_route }],
        });
        if let Some(dir) = &self.ipam_data_dir {
            ipam["dataDir"] = json!(dir);
        }
        json!({
            "cniVersion": CNI_VERSION,
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": ipam,
                },
                {
                    "type": "portmap",
                    "capabilities": { "portMappings": true },
                },
            ],
        })
    }

    /// Writes the configuration into `dir` unless an identical one is already there.
    /// Returns the file's path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, Error> {
        let path = dir.join(self.file_name());
        let contents =
            serde_json::to_string_pretty(&self.conflist()).expect("a JSON value always serializes");
        if fs::read_to_string(&path).is_ok_and(|current| current == contents) {
            return Ok(path);
        }
        let err = |source| Error::Write {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join(format!(".{}.tmp", self.file_name()));
        let mut file = fs::File::create(&tmp).map_err(err)?;
        file.write_all(contents.as_bytes()).map_err(err)?;
        file.sync_all().map_err(err)?;
        fs::rename(&tmp, &path).map_err(err)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> BridgeNetwork {
        BridgeNetwork {
            name: "nodus".into(),
            bridge: "cni0".into(),
            subnet: "10.244.0.0/24".parse().expect("valid CIDR"),
            ipam_data_dir: Some(PathBuf::from("/var/lib/nodus/cni")),
        }
    }

    #[test]
    fn bridge_with_host_local_ipam_for_the_pod_cidr() {
        let conf = network().conflist();
        let bridge = &conf["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "cni0");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["hairpinMode"], true);
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.244.0.0/24");
        assert_eq!(bridge["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(bridge["ipam"]["dataDir"], "/var/lib/nodus/cni");
        assert_eq!(conf["plugins"][1]["type"], "portmap");
        assert_eq!(conf["plugins"][1]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn host_bits_in_the_cidr_are_dropped_and_ipv6_routes_default_v6() {
        let mut net = network();
        net.subnet = "fd00:10:244::5/64".parse().expect("valid CIDR");
        net.ipam_data_dir = None;
        let conf = net.conflist();
        let ipam = &conf["plugins"][0]["ipam"];
        assert_eq!(ipam["ranges"][0][0]["subnet"], "fd00:10:244::/64");
        assert_eq!(ipam["routes"][0]["dst"], "::/0");
        assert!(ipam.get("dataDir").is_none());
    }

    #[test]
    fn write_is_idempotent_and_replaces_a_changed_file() {
        let dir = std::env::temp_dir().join(format!("nodus-cni-test-{}", std::process::id()));
        let net = network();
        let path = net.write(&dir).expect("first write");
        let first = fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        assert_eq!(net.write(&dir).expect("second write"), path);
        assert_eq!(
            fs::metadata(&path)
                .and_then(|m| m.modified())
                .expect("mtime"),
            first
        );

        let mut changed = net.clone();
        changed.subnet = "10.244.7.0/24".parse().expect("valid CIDR");
        changed.write(&dir).expect("rewrite");
        let text = fs::read_to_string(&path).expect("read back");
        assert!(text.contains("10.244.7.0/24"), "{text}");
        assert_eq!(
            fs::read_dir(&dir).expect("list").count(),
            1,
            "no temporary file left"
        );
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
