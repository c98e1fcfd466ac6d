//! Mutual TLS on every dtc link, from three PEM files: this process's
//! certificate, its private key, and the CA that signs every member's,
//! participant's and client's certificate.
//!
//! ```text
//! --tls-cert/--tls-key/--tls-ca (or DTC_TLS_CERT/KEY/CA) ─► Tls::load
//!   servers:  Server::builder().tls_config(tls.server_config())
//!             a client certificate signed by the CA is REQUIRED: a peer
//!             without one is refused in the handshake, before any gRPC
//!             message is read
//!   dialers:  endpoint(addr, Some(&tls)): https://, our certificate, and
//!             the server's certificate checked against the CA and the host
//!             name or IP address dialed (its subjectAltName)
//! ```
//!
//! One switch for a whole deployment: a process with TLS dials `https://`
//! whatever scheme an address was written or registered with, and one
//! without dials `http://`, so a cluster is either TLS on every link or on
//! none. `deploy/make-certs.sh` makes a CA and the certificates.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The environment variables [`Tls::from_env`] reads (and every `dtc`
/// command's `--tls-*` flags fall back to).
pub const CERT_VAR: &str = "DTC_TLS_CERT";
pub const KEY_VAR: &str = "DTC_TLS_KEY";
pub const CA_VAR: &str = "DTC_TLS_CA";

/// How long a TLS handshake may take before the connection is dropped (a
/// peer that connects and says nothing must not hold a server task).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the PEM files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate (it may be followed by intermediates).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1 PEM).
    pub key: PathBuf,
    /// The CA certificate every peer's certificate must chain to.
    pub ca: PathBuf,
}

/// Why TLS settings cannot be used. Each names the file or setting.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS needs all three of the certificate, the key and the CA ({0} missing)")]
    Incomplete(String),
    #[error("cannot read the TLS {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the TLS {what} {path} holds no PEM {expected}")]
    NotPem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("the TLS files ({cert}, {key}, {ca}) cannot be used: {why}")]
    Rejected {
        cert: String,
        key: String,
        ca: String,
        why: String,
    },
}

/// Loaded TLS settings, shared by a process's server and every channel it
/// dials. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    files: TlsFiles,
    identity: Identity,
    ca: Certificate,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs: only where the files are.
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

fn read(what: &'static str, path: &Path, expected: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let marker = format!("-----BEGIN {expected}");
    let text = String::from_utf8_lossy(&bytes);
    let found = if expected == "PRIVATE KEY" {
        // PKCS#8 "PRIVATE KEY", PKCS#1 "RSA PRIVATE KEY", SEC1 "EC PRIVATE KEY".
        text.contains("-----BEGIN ") && text.contains("PRIVATE KEY-----")
    } else {
        text.contains(&marker)
    };
    if !found {
        return Err(TlsError::NotPem {
            what,
            path: path.to_path_buf(),
            expected,
        });
    }
    Ok(bytes)
}

/// An error and its sources on one line (tonic's own message is often just
/// "transport error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

impl Tls {
    /// Reads the three files and checks that they make a usable server and
    /// client configuration (a key that does not parse, or a certificate
    /// that is not PEM, is refused here, naming the files, rather than at
    /// the first connection).
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let cert = read("certificate", &files.cert, "CERTIFICATE")?;
        let key = read("key", &files.key, "PRIVATE KEY")?;
        let ca = read("CA certificate", &files.ca, "CERTIFICATE")?;
        let tls = Tls {
            identity: Identity::from_pem(cert, key),
            ca: Certificate::from_pem(ca),
            files,
        };
        let rejected = |e: &dyn std::error::Error| TlsError::Rejected {
            cert: tls.files.cert.display().to_string(),
            key: tls.files.key.display().to_string(),
            ca: tls.files.ca.display().to_string(),
            why: chain(e),
        };
        tonic::transport::Server::builder()
            .tls_config(tls.server_config())
            .map_err(|e| rejected(&e))?;
        Endpoint::from_static("https://localhost:1")
            .tls_config(tls.client_config())
            .map_err(|e| rejected(&e))?;
        Ok(tls)
    }

    /// TLS from optional flags: all three given, or none (no TLS). One or
    /// two of them is an error naming what is missing.
    pub fn from_parts(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Result<Option<Tls>, TlsError> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Tls::load(TlsFiles { cert, key, ca }).map(Some),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "the certificate (--tls-cert, DTC_TLS_CERT)"),
                    (key.is_none(), "the key (--tls-key, DTC_TLS_KEY)"),
                    (ca.is_none(), "the CA (--tls-ca, DTC_TLS_CA)"),
                ]
                .into_iter()
                .filter_map(|(gone, what)| gone.then_some(what))
                .collect();
                Err(TlsError::Incomplete(missing.join(" and ")))
            }
        }
    }

    /// TLS from `DTC_TLS_CERT`, `DTC_TLS_KEY` and `DTC_TLS_CA` (none set:
    /// no TLS).
    pub fn from_env() -> Result<Option<Tls>, TlsError> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Tls::from_parts(var(CERT_VAR), var(KEY_VAR), var(CA_VAR))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// For a server: our certificate, and a client certificate signed by
    /// the CA required of every connection.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// For a channel: our certificate, and the server's checked against the CA.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .identity(self.identity.clone())
            .ca_certificate(self.ca.clone())
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

/// `addr` (`HOST:PORT`, `http://…` or `https://…`) as the URI to dial:
/// `https://` with TLS, `http://` without, whatever it was written with.
pub fn uri(addr: &str, tls: bool) -> String {
    let rest = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    if tls {
        format!("https://{rest}")
    } else {
        format!("http://{rest}")
    }
}

/// A channel builder for `addr`, with TLS when `tls` is given (see [`uri`]).
pub fn endpoint(addr: &str, tls: Option<&Tls>) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(uri(addr, tls.is_some()))?;
    match tls {
        Some(tls) => endpoint.tls_config(tls.client_config()),
        None => Ok(endpoint),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_follows_the_tls_setting() {
        assert_eq!(uri("127.0.0.1:7001", false), "http://127.0.0.1:7001");
        assert_eq!(uri("127.0.0.1:7001", true), "https://127.0.0.1:7001");
        assert_eq!(uri("http://a:1", true), "https://a:1");
        assert_eq!(uri("https://a:1", false), "http://a:1");
    }

    #[test]
    fn some_but_not_all_files_is_an_error_naming_the_missing_ones() {
        let e = Tls::from_parts(Some("c.pem".into()), None, None).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("--tls-key") && text.contains("--tls-ca"),
            "{text}"
        );
        assert!(!text.contains("--tls-cert"), "{text}");
        assert!(Tls::from_parts(None, None, None).unwrap().is_none());
    }

    #[test]
    fn unreadable_and_non_pem_files_are_named() {
        let dir = std::env::temp_dir().join(format!("dtc-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let files = |cert: &Path| TlsFiles {
            cert: cert.to_path_buf(),
            key: junk.clone(),
            ca: junk.clone(),
        };
        let e = Tls::load(files(&dir.join("missing.pem"))).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let e = Tls::load(files(&junk)).unwrap_err();
        assert!(
            e.to_string().contains("junk.pem") && e.to_string().contains("CERTIFICATE"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
