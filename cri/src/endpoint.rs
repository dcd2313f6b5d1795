//! Endpoint: where the container runtime listens, parsed from the kubelet's
//! `--container-runtime-endpoint` syntax (`unix:///path` or a bare absolute path).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::Error;

/// A CRI endpoint. Only unix sockets exist on Linux, as with the kubelet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    socket: PathBuf,
}

impl Endpoint {
    /// Parses `unix:///run/containerd/containerd.sock` or `/run/containerd/containerd.sock`.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let unsupported = || Error::UnsupportedEndpoint {
            endpoint: raw.to_owned(),
        };
        let path = match raw.split_once("://") {
            Some(("unix", path)) => path,
            Some(_) => return Err(unsupported()),
            None => raw,
        };
        if !path.starts_with('/') {
            return Err(unsupported());
        }
        Ok(Self {
            socket: PathBuf::from(path),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unix://{}", self.socket.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_unix_urls_and_bare_paths() {
        for raw in [
            "unix:///run/containerd/containerd.sock",
            "/run/containerd/containerd.sock",
        ] {
            let endpoint = Endpoint::parse(raw).expect("valid endpoint");
            assert_eq!(
                endpoint.socket(),
                Path::new("/run/containerd/containerd.sock")
            );
            assert_eq!(
                endpoint.to_string(),
                "unix:///run/containerd/containerd.sock"
            );
        }
    }

    #[test]
    fn rejects_other_schemes_and_relative_paths() {
        for raw in [
            "tcp://127.0.0.1:1234",
            "npipe:////./pipe/x",
            "containerd.sock",
            "unix://relative",
            "",
        ] {
            let err = Endpoint::parse(raw).expect_err(raw);
            assert!(
                matches!(err, Error::UnsupportedEndpoint { .. }),
                "{raw}: {err}"
            );
        }
    }
}
