//! Accepting HTTP/1.1 connections for the heartbeat and operations ports, with the limits
//! `axum::serve` lacks: a connection limit, a header-read timeout (which is also the keep-alive
//! idle timeout), a bounded header buffer, and optional TLS whose certificate and key are read
//! again when their files change. Needs sockets and files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;

/// Per-connection limits.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// From when a connection is ready for a request (just opened, TLS done, or done with the
    /// previous request) until that request's headers are complete. Hyper runs one timer for
    /// both, so this is the keep-alive idle timeout too.
    pub header_read_timeout: Duration,
    /// The TLS handshake's deadline.
    pub handshake_timeout: Duration,
    /// A request's head may not exceed this (hyper's read buffer; at least 8 KiB).
    pub max_header_bytes: usize,
    /// How long open connections may finish their request on shutdown.
    pub drain_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> ConnLimits {
        ConnLimits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error(
        "{path} holds no usable PEM private key (expected PKCS#8, PKCS#1 or SEC1, unencrypted): {why}"
    )]
    Key { path: PathBuf, why: String },
    #[error("TLS settings: {0}")]
    Config(rustls::Error),
}

/// A certificate and key read from files, read again by `reload` when their content changed.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    /// The files' bytes, to notice a change whatever their timestamps say (Secret volumes
    /// swap a symlink).
    pem: (Vec<u8>, Vec<u8>),
    key: Arc<CertifiedKey>,
}

impl ReloadingCert {
    /// Reads both files; fails if they do not hold a certificate and a matching key.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<ReloadingCert, TlsError> {
        let pem = read_pair(cert_file, key_file)?;
        let key = certified_key(cert_file, key_file, &pem)?;
        Ok(ReloadingCert {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: RwLock::new(Loaded { pem, key }),
        })
    }

    /// Reads the files again. `Ok(true)`: a new certificate is in use; `Ok(false)`: nothing
    /// changed; `Err`: the new files are unusable, and the previous certificate stays in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let pem = read_pair(&self.cert_file, &self.key_file)?;
        if self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .pem
            == pem
        {
            return Ok(false);
        }
        let key = certified_key(&self.cert_file, &self.key_file, &pem)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Loaded { pem, key };
        Ok(true)
    }

    /// Reloads every `period` until the process ends.
    pub fn watch(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        let cert = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match cert.reload() {
                    Ok(true) => {
                        tracing::info!(cert = %cert.cert_file.display(), "TLS certificate reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate not reloaded; the previous one stays in use")
                    }
                }
            }
        })
    }

    /// A TLS acceptor that always presents the latest certificate; HTTP/1.1 only.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .key,
        ))
    }
}

fn read_pair(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    Ok((read(cert_file)?, read(key_file)?))
}

fn certified_key(
    cert_file: &Path,
    key_file: &Path,
    (cert_pem, key_pem): &(Vec<u8>, Vec<u8>),
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_owned(),
        });
    }
    let bad_key = |why: String| TlsError::Key {
        path: key_file.to_owned(),
        why,
    };
    let der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad_key(e.to_string()))?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| bad_key(e.to_string()))?;
    let key = CertifiedKey::new(chain, signer);
    // A key that does not belong to the certificate would fail every handshake.
    key.keys_match()
        .map_err(|e| bad_key(format!("it does not match the certificate: {e}")))?;
    Ok(Arc::new(key))
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open requests finish
/// for up to `limits.drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, for instance: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.refused("connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, limits, tls, metrics, stop) = (
            router.clone(),
            limits.clone(),
            tls.clone(),
            Arc::clone(&metrics),
            stop_rx.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => connection(stream, router, &limits, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => connection(stream, router, &limits, stop).await,
                        Ok(Err(e)) => {
                            metrics.refused("tls_handshake");
                            tracing::debug!(error = %e, "TLS handshake failed");
                        }
                        Err(_) => metrics.refused("tls_handshake"),
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let max = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(limits.drain_timeout, slots.acquire_many(max)).await;
}

async fn connection<IO>(
    io: IO,
    router: Router,
    limits: &ConnLimits,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    tokio::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
