//! A certificate and its key in PEM files that a rotation replaces (the kubelet's
//! `kubelet-client-current.pem` and `kubelet-server-current.pem`, symlinks to the newest
//! issued file): read again whenever the file changes, so that each TLS handshake uses what
//! is on disk now without a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tracing::{debug, warn};

#[derive(Debug)]
pub struct CertFile {
    pub cert: PathBuf,
    pub key: PathBuf,
    cached: Mutex<Option<(SystemTime, Arc<CertifiedKey>)>>,
}

impl CertFile {
    pub fn new(cert: PathBuf, key: PathBuf) -> Self {
        Self {
            cert,
            key,
            cached: Mutex::new(None),
        }
    }

    fn load(&self) -> Result<Arc<CertifiedKey>, String> {
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|err| format!("{}: {err}", self.cert.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate", self.cert.display()));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|err| format!("{}: {err}", self.key.display()))?;
        let key = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|err| format!("{}: {err}", self.key.display()))?;
        Ok(Arc::new(CertifiedKey::new(certs, key)))
    }

    /// The certificate and key as the files hold them now; the last good ones if the files
    /// cannot be read; `None` when there never were any.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        // A rotation points the symlink at a new file: its mtime tells a new certificate.
        let modified = std::fs::metadata(&self.cert).and_then(|m| m.modified());
        let mut cached = self.cached.lock().ok()?;
        let Ok(modified) = modified else {
            return cached.as_ref().map(|(_, c)| c.clone());
        };
        if let Some((at, certified)) = cached.as_ref()
            && *at == modified
        {
            return Some(certified.clone());
        }
        match self.load() {
            Ok(certified) => {
                debug!(cert = %self.cert.display(), "certificate loaded");
                *cached = Some((modified, certified.clone()));
                Some(certified)
            }
            Err(err) => {
                warn!(error = %err, "loading a certificate failed");
                cached.as_ref().map(|(_, c)| c.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(dir: &std::path::Path, name: &str, cn: &str) -> PathBuf {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["n".into()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).expect("cert");
        let path = dir.join(name);
        std::fs::write(&path, format!("{}{}", cert.pem(), key.serialize_pem())).expect("write");
        path
    }

    #[test]
    fn a_replaced_file_is_read_again() {
        let dir = tempfile::tempdir().expect("dir");
        let current = dir.path().join("current.pem");
        let file = CertFile::new(current.clone(), current.clone());
        assert!(file.current().is_none(), "nothing yet");
        let first = issue(dir.path(), "first.pem", "one");
        std::os::unix::fs::symlink(&first, &current).expect("link");
        let one = file.current().expect("loaded");
        assert!(Arc::ptr_eq(&one, &file.current().expect("cached")));
        let second = issue(dir.path(), "second.pem", "two");
        // Written months apart in life; within one clock tick here.
        std::fs::File::options()
            .write(true)
            .open(&second)
            .and_then(|f| f.set_modified(SystemTime::now() + std::time::Duration::from_secs(60)))
            .expect("mtime");
        // A rotation: the link is replaced by one to a newer file.
        let tmp = dir.path().join("link.tmp");
        std::os::unix::fs::symlink(&second, &tmp).expect("link");
        std::fs::rename(&tmp, &current).expect("rename");
        let two = file.current().expect("reloaded");
        assert_ne!(one.cert, two.cert);
        // A broken file keeps the last good certificate.
        std::fs::write(&second, "garbage").expect("write");
        assert_eq!(file.current().expect("kept").cert, two.cert);
    }
}
