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
    _databases: Vec<TestDatabase>,
}

impl TestSystem {
    pub fn endpoint(&self, role: Role) -> String {
        self.system.endpoint(role)
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
    let databases: Vec<TestDatabase> = Role::ALL
        .iter()
        .map(|role| TestDatabase::new(role.name()))
        .collect();
    let url = |role: Role| {
        let index = Role::ALL.iter().position(|r| *r == role).unwrap();
        databases[index].url().to_owned()
    };
    let (trigger, shutdown) = Shutdown::new();
    let system = System::start(
        url,
        |_| "127.0.0.1:0".to_owned(),
        &test_settings(),
        shutdown,
    )
    .await
    .expect("the system starts");
    TestSystem {
        system,
        trigger,
        _databases: databases,
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
