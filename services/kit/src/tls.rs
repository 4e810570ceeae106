//! TLS from PEM files (rustls): a server's certificate and key, and the CA a client trusts.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A PEM file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {what} `{path}`: {source}")]
pub struct TlsFileError {
    /// Which file it was meant to be.
    pub what: &'static str,
    /// Where it was looked for.
    pub path: PathBuf,
    /// What the OS said.
    #[source]
    pub source: std::io::Error,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError {
        what,
        path: path.to_owned(),
        source,
    })
}

/// A server's certificate chain and private key.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl ServerTls {
    /// From PEM text (tests generate theirs).
    pub fn from_pem(cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        }
    }

    /// From PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsFileError> {
        Ok(Self::from_pem(
            read("TLS certificate", cert)?,
            read("TLS private key", key)?,
        ))
    }

    /// The settings tonic's server takes.
    pub fn config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key never prints.
        f.write_str("ServerTls { .. }")
    }
}

/// The CA a client trusts, and the name it expects the server's certificate to carry.
#[derive(Debug, Clone)]
pub struct ClientTls {
    ca_pem: Vec<u8>,
    domain: Option<String>,
}

impl ClientTls {
    /// Trusts the CA in this PEM text.
    pub fn from_pem(ca_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            ca_pem: ca_pem.into(),
            domain: None,
        }
    }

    /// Trusts the CA in this PEM file.
    pub fn from_file(ca: &Path) -> Result<Self, TlsFileError> {
        Ok(Self::from_pem(read("TLS CA certificate", ca)?))
    }

    /// Expects this name in the server certificate instead of the endpoint's host.
    pub fn with_domain(mut self, domain: Option<String>) -> Self {
        self.domain = domain;
        self
    }

    /// The settings tonic's channel takes.
    pub fn config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        match &self.domain {
            Some(domain) => config.domain_name(domain.clone()),
            None => config,
        }
    }
}
