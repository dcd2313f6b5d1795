//! The agent's API client, ready for client certificate rotation.
//!
//! When the kubeconfig names its client certificate and key by file (as the one TLS
//! bootstrap writes does: `kubelet-client-current.pem`), each TLS handshake takes the
//! identity from those files as they are then, and [`Connections::close_all`] ends every
//! open connection, so that after a rotation every request, watches included, goes over a
//! connection made with the new certificate — the kubelet's "close all connections" on
//! rotation. An old certificate is never used once a new one is on disk.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::FutureExt;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use kube::Client;

use super::cert_file::CertFile;
use kube::client::{ClientBuilder, ConfigExt};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::{BoxError, ServiceBuilder, ServiceExt};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("building a client from kubeconfig {path}")]
    Build {
        path: PathBuf,
        #[source]
        source: kube::Error,
    },
}

/// The open connections of a client, so that they can all be ended at once.
#[derive(Debug, Default)]
pub struct Connections {
    /// Cancelled to end the connections made under it; replaced by a fresh one.
    generation: Mutex<CancellationToken>,
}

impl Connections {
    /// Ends every open connection; the next request makes a new one.
    pub fn close_all(&self) {
        let old = std::mem::take(&mut *self.generation.lock().expect("connections lock"));
        old.cancel();
    }

    fn current(&self) -> CancellationToken {
        self.generation.lock().expect("connections lock").clone()
    }
}

/// A client whose identity is read from a certificate file at each new connection.
#[derive(Debug, Clone)]
pub struct FileBacked {
    /// The client certificate file the kubeconfig names.
    pub cert: PathBuf,
    pub connections: Arc<Connections>,
}

/// A client for `path`, and what rotation needs when its identity comes from files
/// (`None` for a kubeconfig with inline or token credentials).
pub async fn build(path: &Path) -> Result<(Client, Option<FileBacked>), ClientError> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| ClientError::Kubeconfig {
        path: path.to_owned(),
        source,
    })?;
    let files = identity_files(&kubeconfig, path);
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| ClientError::Kubeconfig {
            path: path.to_owned(),
            source,
        })?;
    let build_error = |source| ClientError::Build {
        path: path.to_owned(),
        source,
    };
    let Some((cert, key)) = files else {
        return Ok((Client::try_from(config).map_err(build_error)?, None));
    };
    let connections = Arc::new(Connections::default());
    let mut tls = config.rustls_client_config().map_err(build_error)?;
    tls.client_auth_cert_resolver = Arc::new(FileIdentity(CertFile::new(cert.clone(), key)));
    // A resumed TLS session keeps the identity of the handshake it resumes: after a
    // rotation it would present the old certificate again (and fail once that expires).
    tls.resumption = rustls::client::Resumption::disabled();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let tracked = TrackedConnector {
        inner: http,
        connections: connections.clone(),
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tracked);
    let mut timeouts = hyper_timeout::TimeoutConnector::new(https);
    timeouts.set_connect_timeout(config.connect_timeout);
    timeouts.set_read_timeout(config.read_timeout);
    timeouts.set_write_timeout(config.write_timeout);
    let hyper_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(timeouts);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(build_error)?)
        .layer(config.extra_headers_layer().map_err(build_error)?)
        .map_err(BoxError::from)
        .service(hyper_client)
        .map_response(|response| {
            response.map(|body| {
                Box::new(http_body_util::BodyExt::map_err(body, BoxError::from))
                    as Box<kube::client::DynBody>
            })
        })
        .boxed();
    let client = ClientBuilder::new(service, config.default_namespace.clone()).build();
    Ok((client, Some(FileBacked { cert, connections })))
}

/// The client certificate and key files of the kubeconfig's current user, if it names
/// both by path (relative paths are relative to the kubeconfig, as kubectl takes them).
fn identity_files(kubeconfig: &Kubeconfig, path: &Path) -> Option<(PathBuf, PathBuf)> {
    let user = super::bootstrap::current_context(kubeconfig).and_then(|c| c.user.clone());
    let auth = match user {
        Some(user) => kubeconfig.auth_infos.iter().find(|a| a.name == user),
        None => kubeconfig.auth_infos.first(),
    }?
    .auth_info
    .as_ref()?;
    let base = path.parent().unwrap_or(Path::new("."));
    let cert = base.join(auth.client_certificate.as_ref()?);
    let key = base.join(auth.client_key.as_ref()?);
    Some((cert, key))
}

/// The client identity as the files hold it now.
#[derive(Debug)]
struct FileIdentity(CertFile);

impl ResolvesClientCert for FileIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Makes TCP connections that end when their generation is closed.
#[derive(Clone)]
struct TrackedConnector {
    inner: HttpConnector,
    connections: Arc<Connections>,
}

impl tower::Service<Uri> for TrackedConnector {
    type Response = Tracked<<HttpConnector as tower::Service<Uri>>::Response>;
    type Error = <HttpConnector as tower::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let closed = self.connections.current().cancelled_owned();
        let connecting = self.inner.call(uri);
        async move {
            Ok(Tracked {
                inner: connecting.await?,
                closed: Box::pin(closed),
            })
        }
        .boxed()
    }
}

/// A connection that fails its reads and writes once its generation is closed, which
/// makes the HTTP client drop it (and a watch on it start again on a new one).
struct Tracked<S> {
    inner: S,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<S> Tracked<S> {
    fn check_closed(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        self.closed.as_mut().poll(cx).is_ready().then(|| {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "connection closed for a new client certificate",
            )
        })
    }
}

impl<S: hyper::rt::Read + Unpin> hyper::rt::Read for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(err) = self.check_closed(cx) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: hyper::rt::Write + Unpin> hyper::rt::Write for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(err) = self.check_closed(cx) {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connection> Connection for Tracked<S> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}
