//! The five servers as separate processes of this binary, on fixed loopback ports so a killed
//! process comes back where its clients look for it.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use checkout_kit::auth::Credentials;
use rand::Rng;

use crate::role::Role;

/// How to start each server.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Database URL per role.
    pub databases: BTreeMap<&'static str, String>,
    /// The stock fixture file the inventory seeds from.
    pub stock_file: PathBuf,
    /// Seed for the servers' fault randomness.
    pub seed: u64,
    /// The keys the servers accept (they get only the hashes).
    pub credentials: Credentials,
    /// File holding the internal key, for the orchestrator to present.
    pub internal_key_file: PathBuf,
}

/// A process that did not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the {role} process: {source}")]
pub struct SpawnError {
    /// Which role.
    pub role: Role,
    /// What failed.
    #[source]
    pub source: std::io::Error,
}

/// The running processes.
#[derive(Debug)]
pub struct Cluster {
    spec: ClusterSpec,
    ports: BTreeMap<&'static str, u16>,
    children: BTreeMap<&'static str, Child>,
    /// Kills this run made.
    pub kills: Vec<String>,
    /// Restarts this run made (after kills and crashes).
    pub restarts: usize,
}

/// The range the kernel takes outgoing connections' local ports from (Linux's default when it
/// cannot be read).
fn ephemeral_ports() -> RangeInclusive<u16> {
    let configured = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some(bounds.next()??..=bounds.next()??)
        });
    configured.unwrap_or(32768..=60999)
}

/// A free loopback port outside the ephemeral range (if one is found), and not in `taken`. A
/// killed server must get its port back when it restarts, and any outgoing connection may hold
/// an ephemeral port meanwhile: the restarted server then cannot bind it and dies again at
/// every restart, and a client dialling that port while nobody listens can even connect to
/// itself.
fn free_port(taken: &[u16]) -> std::io::Result<u16> {
    let ephemeral = ephemeral_ports();
    let mut rng = rand::rng();
    for _ in 0..10_000 {
        let port = rng.random_range(10_000..=u16::MAX);
        if ephemeral.contains(&port) || taken.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    // Nearly every port is ephemeral here: take one the kernel gives, as the best left.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Cluster {
    /// Starts the five processes and waits until each answers.
    pub async fn start(spec: ClusterSpec) -> Result<Self, SpawnError> {
        let mut ports = BTreeMap::new();
        for role in Role::ALL {
            let taken: Vec<u16> = ports.values().copied().collect();
            let port = free_port(&taken).map_err(|source| SpawnError { role, source })?;
            ports.insert(role.name(), port);
        }
        let mut cluster = Self {
            spec,
            ports,
            children: BTreeMap::new(),
            kills: Vec::new(),
            restarts: 0,
        };
        for role in Role::ALL {
            cluster.spawn(role)?;
        }
        for role in Role::ALL {
            cluster.await_ready(role).await;
        }
        Ok(cluster)
    }

    /// The `http://` endpoint of a role.
    pub fn endpoint(&self, role: Role) -> String {
        format!("http://127.0.0.1:{}", self.ports[role.name()])
    }

    fn spawn(&mut self, role: Role) -> Result<(), SpawnError> {
        let mut command =
            Command::new(std::env::current_exe().map_err(|source| SpawnError { role, source })?);
        for (key, _) in std::env::vars() {
            if key.starts_with("CHECKOUT_") {
                command.env_remove(key);
            }
        }
        command
            .arg("serve")
            .arg(role.name())
            .args([
                "--listen",
                &format!("127.0.0.1:{}", self.ports[role.name()]),
            ])
            .args(["--database-url", &self.spec.databases[role.name()]])
            .arg("--allow-fault-injection")
            .args(["--fault-seed", &self.spec.seed.to_string()])
            .arg("--stock-file")
            .arg(&self.spec.stock_file)
            .args(["--replica-id", "chaos-orchestrator"])
            .args(["--lease-ttl-ms", "3000", "--sweep-interval-ms", "100"])
            .args(["--step-timeout-ms", "2000", "--reaper-interval-ms", "500"])
            .args(["--drain-timeout-ms", "500"])
            .env(
                "CHECKOUT_STOREFRONT_KEY_SHA256",
                self.spec.credentials.storefront.hash().to_hex(),
            )
            .env(
                "CHECKOUT_INTERNAL_KEY_SHA256",
                self.spec.credentials.internal.hash().to_hex(),
            )
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if role == Role::Orchestrator {
            command.env("CHECKOUT_INTERNAL_KEY_FILE", &self.spec.internal_key_file);
        }
        for other in [
            Role::Cart,
            Role::Inventory,
            Role::Payment,
            Role::Fulfillment,
        ] {
            command
                .arg(format!("--{}-endpoint", other.name()))
                .arg(self.endpoint(other));
        }
        let child = command
            .spawn()
            .map_err(|source| SpawnError { role, source })?;
        self.children.insert(role.name(), child);
        Ok(())
    }

    async fn await_ready(&self, role: Role) {
        let addr = format!("127.0.0.1:{}", self.ports[role.name()]);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs a role's process.
    pub fn kill(&mut self, role: Role) {
        if let Some(child) = self.children.get_mut(role.name()) {
            let _ = child.kill();
            let _ = child.wait();
            self.kills.push(role.name().to_owned());
        }
    }

    /// Starts a role's process again (after a kill or a crash).
    pub async fn restart(&mut self, role: Role) -> Result<(), SpawnError> {
        self.spawn(role)?;
        self.restarts += 1;
        self.await_ready(role).await;
        Ok(())
    }

    /// Restarts every process that died on its own (an injected crash); returns their roles.
    pub async fn revive(&mut self) -> Result<Vec<Role>, SpawnError> {
        let mut dead = Vec::new();
        for role in Role::ALL {
            if let Some(child) = self.children.get_mut(role.name())
                && matches!(child.try_wait(), Ok(Some(_)))
            {
                dead.push(role);
            }
        }
        for role in &dead {
            self.restart(*role).await?;
        }
        Ok(dead)
    }

    /// Stops every process (SIGKILL: the databases are consistent at any moment).
    pub fn stop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_get_ports_no_outgoing_connection_can_hold() {
        let ephemeral = ephemeral_ports();
        let mut taken = Vec::new();
        for _ in 0..50 {
            let port = free_port(&taken).expect("a free port");
            assert!(!ephemeral.contains(&port), "{port} is in {ephemeral:?}");
            assert!(!taken.contains(&port));
            taken.push(port);
        }
    }
}
