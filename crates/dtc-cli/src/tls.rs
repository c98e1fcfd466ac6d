//! The `--tls-cert`, `--tls-key` and `--tls-ca` flags every subcommand that
//! serves or dials takes (or `DTC_TLS_CERT`, `DTC_TLS_KEY`, `DTC_TLS_CA`):
//! all three turn on mutual TLS (`dtc_proto::tls`), none leaves it off.

use dtc_proto::tls::{Tls, TlsError};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Mutual TLS: this process's certificate (PEM), signed by the cluster's
    /// CA (deploy/make-certs.sh). With --tls-key and --tls-ca, every
    /// connection is TLS and needs a certificate from the same CA.
    #[arg(long, env = "DTC_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Mutual TLS: the private key of --tls-cert (PEM).
    #[arg(long, env = "DTC_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: the CA certificate (PEM) every peer's certificate must be
    /// signed by.
    #[arg(long, env = "DTC_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The loaded settings, None without the flags, or an error naming the
    /// missing flag or the unusable file.
    pub fn load(&self) -> Result<Option<Tls>, TlsError> {
        Tls::from_parts(
            self.tls_cert.clone(),
            self.tls_key.clone(),
            self.tls_ca.clone(),
        )
    }
}
