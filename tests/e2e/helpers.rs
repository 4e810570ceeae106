//! Starting the whole system for a test.

use checkout::launch::{Settings, System};
use checkout::role::Role;
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

    /// The database URL a role's server uses.
    pub fn database_url(&self, role: Role) -> &str {
        let index = Role::ALL.iter().position(|r| *r == role).unwrap();
        self.databases[index].url()
    }
}

pub fn test_settings() -> Settings {
    Settings {
        limits: ServerLimits {
            drain_timeout: Duration::from_secs(2),
            ..ServerLimits::default()
        },
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

/// A connected channel to an endpoint.
pub async fn channel(endpoint: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .expect("a valid endpoint")
        .connect()
        .await
        .expect("the server accepts connections")
}
