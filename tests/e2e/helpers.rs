//! Starting the whole system for a test.

use checkout::launch::{Security, Settings, System};
use checkout::role::Role;
use checkout_kit::auth::{Credentials, Secret};
use checkout_kit::client::{self, ClientOptions, OutboundChannel};
use checkout_kit::db::{Db, PoolConfig};
use checkout_kit::server::ServerLimits;
use checkout_kit::shutdown::{Shutdown, ShutdownTrigger};
use checkout_kit::testing::TestDatabase;
use std::time::Duration;

/// The five servers on port 0, each with a fresh database.
pub struct TestSystem {
    pub system: System,
    pub trigger: ShutdownTrigger,
    databases: Vec<TestDatabase>,
}

impl TestSystem {
    pub fn endpoint(&self, role: Role) -> String {
        self.system.endpoint(role)
    }

    /// Every row of every table of all five databases and of the simulated processor's books:
    /// equal snapshots mean nothing changed.
    pub async fn snapshot(&self) -> String {
        let mut out = String::new();
        for (role, database) in Role::ALL.iter().zip(&self.databases) {
            let db = Db::connect(database.url(), &PoolConfig::default())
                .await
                .expect("open a database for a snapshot");
            let mut dbs = vec![(role.to_string(), db.clone())];
            if *role == Role::Payment && db.sqlite_file().is_some() {
                let books = checkout_payment::processor::open_books(&db, &PoolConfig::default())
                    .await
                    .expect("open the processor's books for a snapshot");
                dbs.push(("processor books".to_owned(), books));
            }
            for (name, db) in dbs {
                out.push_str(&format!("### {name}\n"));
                out.push_str(
                    &checkout_kit::testing::snapshot(&db)
                        .await
                        .expect("snapshot a database"),
                );
                db.close().await;
            }
        }
        out
    }

    /// The database URL a role's server uses.
    pub fn database_url(&self, role: Role) -> &str {
        let index = Role::ALL.iter().position(|r| *r == role).unwrap();
        self.databases[index].url()
    }
}

/// The keys every test system accepts.
pub fn test_credentials() -> Credentials {
    Credentials {
        storefront: Secret::new("test-storefront-key"),
        internal: Secret::new("test-internal-key"),
    }
}

/// Servers as deployed: keys required, the orchestrator presenting the internal one.
pub fn test_settings() -> Settings {
    Settings {
        limits: ServerLimits {
            drain_timeout: Duration::from_secs(2),
            ..ServerLimits::default()
        },
        security: Security::with_credentials(&test_credentials()),
        ..Settings::default()
    }
}

pub async fn spawn_system() -> TestSystem {
    spawn_system_with(test_settings()).await
}

pub async fn spawn_system_with(settings: Settings) -> TestSystem {
    let databases: Vec<TestDatabase> = Role::ALL
        .iter()
        .map(|role| TestDatabase::new(role.name()))
        .collect();
    let url = |role: Role| {
        let index = Role::ALL.iter().position(|r| *r == role).unwrap();
        databases[index].url().to_owned()
    };
    let (trigger, shutdown) = Shutdown::new();
    let system = System::start(url, |_| "127.0.0.1:0".to_owned(), &settings, shutdown)
        .await
        .expect("the system starts");
    TestSystem {
        system,
        trigger,
        databases,
    }
}

/// A connected channel presenting the internal credential (allowed on every RPC).
pub async fn channel(endpoint: &str) -> OutboundChannel {
    channel_with(
        endpoint,
        ClientOptions::with_bearer(test_credentials().internal_bearer()),
    )
    .await
}

/// A connected channel presenting a storefront key.
pub async fn storefront_channel(endpoint: &str) -> OutboundChannel {
    channel_with(
        endpoint,
        ClientOptions::with_bearer(test_credentials().storefront_bearer()),
    )
    .await
}

/// A connected channel dialled with these options.
pub async fn channel_with(endpoint: &str, options: ClientOptions) -> OutboundChannel {
    client::connect(endpoint, &options)
        .await
        .expect("the server accepts connections")
}

/// Gives a process of the binary the test keys, as an operator would: the hashes, and the
/// internal key in a file for the orchestrator to present.
pub fn with_test_keys(command: &mut std::process::Command) -> &mut std::process::Command {
    static KEY_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let credentials = test_credentials();
    let key_file = KEY_FILE.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let path = dir.join(format!("internal-{unique}.key"));
        std::fs::write(&path, credentials.internal.expose()).expect("write the internal key");
        path
    });
    command
        .env(
            "CHECKOUT_STOREFRONT_KEY_SHA256",
            credentials.storefront.hash().to_hex(),
        )
        .env(
            "CHECKOUT_INTERNAL_KEY_SHA256",
            credentials.internal.hash().to_hex(),
        )
        .env("CHECKOUT_INTERNAL_KEY_FILE", key_file)
}

/// Fails, listing only the rows that differ, unless two snapshots are equal.
#[track_caller]
pub fn assert_unchanged(before: &str, after: &str, what: &str) {
    if before == after {
        return;
    }
    let old: std::collections::BTreeSet<&str> = before.lines().collect();
    let new: std::collections::BTreeSet<&str> = after.lines().collect();
    let gone: Vec<&&str> = old.difference(&new).take(20).collect();
    let added: Vec<&&str> = new.difference(&old).take(20).collect();
    panic!("{what} changed stored state\n  rows gone: {gone:#?}\n  rows added: {added:#?}");
}

/// A snapshot without the idempotency records (a stored refusal is a record, not a change).
pub fn business_rows(snapshot: &str) -> String {
    snapshot
        .lines()
        .filter(|line| {
            !line.starts_with("idempotency_keys") && !line.starts_with("== idempotency_keys")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A codec that sends and receives message bodies as raw bytes: for malformed, wrong-type and
/// oversized requests that generated clients cannot express.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

/// The encoder and decoder of [`RawCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawBytes;

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let len = prost::bytes::Buf::remaining(buf);
        Ok(Some(prost::bytes::Buf::copy_to_bytes(buf, len).to_vec()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

/// Sends `body` as the request of the unary RPC `path` (`/package.Service/Method`).
pub async fn call_raw(
    channel: OutboundChannel,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}
