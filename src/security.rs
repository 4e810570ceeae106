//! The security flags of `up` and `serve` (API key hashes, the orchestrator's internal key,
//! development mode, TLS files) and what they resolve to.

use std::path::{Path, PathBuf};

use checkout_kit::auth::{AuthPolicy, Credentials, KeyHash, Keyring, Secret};
use checkout_kit::tls::{ClientTls, ServerTls};
use clap::Args;

use crate::launch::{LaunchError, Security};

/// Authentication and TLS flags.
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    /// SHA-256 (hex) of each accepted storefront API key, comma-separated; `checkout keygen`
    /// prints a key and its hash. The keys themselves are never configured on servers.
    #[arg(long, env = "CHECKOUT_STOREFRONT_KEY_SHA256", value_delimiter = ',')]
    pub storefront_key_sha256: Vec<String>,
    /// SHA-256 (hex) of each accepted internal key (the orchestrator's and operators'),
    /// comma-separated.
    #[arg(long, env = "CHECKOUT_INTERNAL_KEY_SHA256", value_delimiter = ',')]
    pub internal_key_sha256: Vec<String>,
    /// File holding the internal key the orchestrator presents to the four services.
    #[arg(long, env = "CHECKOUT_INTERNAL_KEY_FILE")]
    pub internal_key_file: Option<PathBuf>,
    /// Development only: accept every call without a key.
    #[arg(long, env = "CHECKOUT_AUTH_DISABLED")]
    pub auth_disabled: bool,
    /// Require a key for health checks and reflection too (open by default).
    #[arg(long, env = "CHECKOUT_REQUIRE_KEY_FOR_HEALTH")]
    pub require_key_for_health: bool,
    /// PEM certificate chain the servers present; with --tls-key, every server speaks TLS.
    #[arg(long, env = "CHECKOUT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "CHECKOUT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate the orchestrator trusts when it dials `https://` services.
    #[arg(long, env = "CHECKOUT_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Name expected in the services' certificates, when it is not the endpoint's host.
    #[arg(long, env = "CHECKOUT_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
}

/// What to do when no key hashes are configured.
#[derive(Debug, Clone)]
pub enum WithoutKeys {
    /// Refuse to start (`serve`: production servers never invent keys).
    Refuse,
    /// Use the development keys in this file, creating it with fresh keys if missing (`up`).
    DevelopmentKeysIn(PathBuf),
}

/// How the servers of this process authenticate, for the start-up banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthNotice {
    /// Configured key hashes.
    Configured,
    /// Development keys from (or written to) this file.
    DevelopmentKeys(PathBuf),
    /// Development mode: nobody is checked.
    Disabled,
}

impl SecurityArgs {
    /// The security these flags describe.
    pub fn resolve(
        &self,
        without_keys: WithoutKeys,
    ) -> Result<(Security, AuthNotice), LaunchError> {
        let config = |e: &dyn std::fmt::Display| LaunchError::Config(e.to_string());
        let server_tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                Some(ServerTls::from_files(cert, key).map_err(|e| config(&e))?)
            }
            _ => None,
        };
        let client_tls = match &self.tls_ca {
            Some(ca) => Some(
                ClientTls::from_file(ca)
                    .map_err(|e| config(&e))?
                    .with_domain(self.tls_domain.clone()),
            ),
            None => None,
        };
        let internal_key = match &self.internal_key_file {
            Some(path) => Some(Secret::from_file(path).map_err(|e| {
                LaunchError::Config(format!(
                    "cannot read --internal-key-file {}: {e}",
                    path.display()
                ))
            })?),
            None => None,
        };
        let configured = !self.storefront_key_sha256.is_empty()
            || !self.internal_key_sha256.is_empty()
            || internal_key.is_some();

        let (auth, internal_key, notice) = if self.auth_disabled {
            if configured {
                return Err(LaunchError::Usage(
                    "--auth-disabled cannot be combined with API key settings".to_owned(),
                ));
            }
            (AuthPolicy::Disabled, None, AuthNotice::Disabled)
        } else if configured {
            let parse = |list: &[String]| -> Result<Vec<KeyHash>, LaunchError> {
                list.iter()
                    .filter(|h| !h.trim().is_empty())
                    .map(|h| KeyHash::parse(h).map_err(|e| config(&e)))
                    .collect()
            };
            let storefront = parse(&self.storefront_key_sha256)?;
            let mut internal = parse(&self.internal_key_sha256)?;
            // A process given the internal key itself accepts it without repeating its hash.
            if let Some(key) = &internal_key {
                internal.push(key.hash());
            }
            let keyring = Keyring::new(storefront, internal).map_err(|e| config(&e))?;
            (
                AuthPolicy::Enforced(keyring),
                internal_key,
                AuthNotice::Configured,
            )
        } else {
            match without_keys {
                WithoutKeys::Refuse => {
                    return Err(LaunchError::Usage(
                        "no API keys configured: set --storefront-key-sha256 and \
                         --internal-key-sha256 (`checkout keygen` makes a key and its hash), or \
                         pass --auth-disabled for development"
                            .to_owned(),
                    ));
                }
                WithoutKeys::DevelopmentKeysIn(path) => {
                    let credentials = development_keys(&path)?;
                    (
                        AuthPolicy::Enforced(credentials.keyring()),
                        Some(credentials.internal),
                        AuthNotice::DevelopmentKeys(path),
                    )
                }
            }
        };
        let auth = match auth {
            AuthPolicy::Enforced(keyring) => {
                AuthPolicy::Enforced(keyring.with_open_health(!self.require_key_for_health))
            }
            AuthPolicy::Disabled => AuthPolicy::Disabled,
        };
        Ok((
            Security {
                auth,
                internal_key,
                server_tls,
                client_tls,
            },
            notice,
        ))
    }
}

/// Names of the variables in a development keys file (sourceable by a shell).
const STOREFRONT_VAR: &str = "CHECKOUT_STOREFRONT_KEY";
const INTERNAL_VAR: &str = "CHECKOUT_INTERNAL_KEY";

/// The development keys in `path`, or fresh ones written there (readable by this user only).
fn development_keys(path: &Path) -> Result<Credentials, LaunchError> {
    let io = |e: std::io::Error| {
        LaunchError::Config(format!("development keys file {}: {e}", path.display()))
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let value = |name: &str| {
                text.lines()
                    .filter_map(|line| line.split_once('='))
                    .find(|(k, _)| k.trim() == name)
                    .map(|(_, v)| Secret::new(v.trim()))
            };
            match (value(STOREFRONT_VAR), value(INTERNAL_VAR)) {
                (Some(storefront), Some(internal)) => Ok(Credentials {
                    storefront,
                    internal,
                }),
                _ => Err(LaunchError::Config(format!(
                    "development keys file {} lacks {STOREFRONT_VAR} or {INTERNAL_VAR}; delete it \
                     to generate new keys",
                    path.display()
                ))),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let credentials = Credentials::generate();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let text = format!(
                "# API keys generated by `checkout up` for development. The servers keep only\n\
                 # their SHA-256. Use: source {}\n{STOREFRONT_VAR}={}\n{INTERNAL_VAR}={}\n",
                path.display(),
                credentials.storefront.expose(),
                credentials.internal.expose()
            );
            write_private(path, &text).map_err(io)?;
            Ok(credentials)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// A fresh API key and the hash servers are configured with (`checkout keygen`).
pub fn keygen() -> String {
    let key = Secret::generate();
    format!(
        "key     {}\nsha256  {}\n\nGive the key to the client (it sends `authorization: Bearer <key>`);\n\
         configure servers with the hash (--storefront-key-sha256 or --internal-key-sha256).\n",
        key.expose(),
        key.hash().to_hex()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        security: SecurityArgs,
    }

    fn flags(args: &[&str]) -> SecurityArgs {
        let mut all = vec!["test"];
        all.extend_from_slice(args);
        Flags::try_parse_from(all).unwrap().security
    }

    #[test]
    fn serve_refuses_to_start_without_keys_or_explicit_development_mode() {
        let err = flags(&[]).resolve(WithoutKeys::Refuse).unwrap_err();
        assert!(err.to_string().contains("--auth-disabled"), "{err}");
        let (security, notice) = flags(&["--auth-disabled"])
            .resolve(WithoutKeys::Refuse)
            .unwrap();
        assert!(security.auth.is_disabled());
        assert_eq!(notice, AuthNotice::Disabled);
        let hash = Secret::new("k").hash().to_hex();
        assert!(
            flags(&["--auth-disabled", "--internal-key-sha256", &hash])
                .resolve(WithoutKeys::Refuse)
                .is_err()
        );
    }

    #[test]
    fn configured_hashes_are_enforced_and_bad_ones_refused() {
        let storefront = Secret::new("sf").hash().to_hex();
        let internal = Secret::new("int").hash().to_hex();
        let (security, notice) = flags(&[
            "--storefront-key-sha256",
            &storefront,
            "--internal-key-sha256",
            &internal,
        ])
        .resolve(WithoutKeys::Refuse)
        .unwrap();
        assert_eq!(notice, AuthNotice::Configured);
        let AuthPolicy::Enforced(ring) = security.auth else {
            panic!("enforced")
        };
        assert_eq!(
            ring.identify(Some(b"Bearer sf")),
            Some(checkout_kit::auth::Caller::Storefront)
        );
        assert!(
            flags(&["--internal-key-sha256", "not-hex"])
                .resolve(WithoutKeys::Refuse)
                .is_err()
        );
    }

    #[test]
    fn up_generates_private_development_keys_once_and_reuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/api-keys.env");
        let (first, notice) = flags(&[])
            .resolve(WithoutKeys::DevelopmentKeysIn(path.clone()))
            .unwrap();
        assert_eq!(notice, AuthNotice::DevelopmentKeys(path.clone()));
        let (second, _) = flags(&[])
            .resolve(WithoutKeys::DevelopmentKeysIn(path.clone()))
            .unwrap();
        assert_eq!(first.internal_key, second.internal_key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "garbage").unwrap();
        assert!(
            flags(&[])
                .resolve(WithoutKeys::DevelopmentKeysIn(path))
                .is_err()
        );
    }
}
