//! Every server answers health and reflection (v1 and v1alpha), and shuts down gracefully.

use std::time::Duration;

use checkout::role::Role;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{channel, spawn_system};

async fn health(endpoint: &str, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(channel(endpoint).await);
    let response = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(response.status).unwrap()
}

#[tokio::test]
async fn every_server_reports_serving_for_itself_and_overall() {
    let sys = spawn_system().await;
    for role in Role::ALL {
        let endpoint = sys.endpoint(role);
        assert_eq!(
            health(&endpoint, "").await,
            ServingStatus::Serving,
            "{role}"
        );
        assert_eq!(
            health(&endpoint, role.grpc_service()).await,
            ServingStatus::Serving,
            "{role}"
        );
    }
    let mut client = HealthClient::new(channel(&sys.endpoint(Role::Cart)).await);
    let unknown = client
        .check(HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    sys.system.stop().await.unwrap();
}

async fn list_v1(endpoint: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let mut client = ServerReflectionClient::new(channel(endpoint).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match stream
        .next()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
    {
        MessageResponse::ListServicesResponse(list) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

async fn describe_v1alpha(endpoint: &str, symbol: &str) -> Vec<Vec<u8>> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let mut client = ServerReflectionClient::new(channel(endpoint).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_owned())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match stream
        .next()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
    {
        MessageResponse::FileDescriptorResponse(files) => files.file_descriptor_proto,
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn every_server_lists_and_describes_its_services_by_reflection() {
    let sys = spawn_system().await;
    for role in Role::ALL {
        let endpoint = sys.endpoint(role);
        let services = list_v1(&endpoint).await;
        for expected in [
            role.grpc_service(),
            "checkout.fault.v1.FaultService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                services.iter().any(|s| s == expected),
                "{role} lists {services:?}, missing {expected}"
            );
        }
        // Only what this server serves: grpcurl must not offer RPCs that are not there.
        assert_eq!(services.len(), 5, "{role} lists {services:?}");
        // Older tools use v1alpha; they must be able to fetch the descriptors too.
        let files = describe_v1alpha(&endpoint, role.grpc_service()).await;
        assert!(
            !files.is_empty(),
            "{role} has no descriptor for its service"
        );
    }
    sys.system.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_reports_not_serving_then_stops() {
    let sys = spawn_system().await;
    let endpoint = sys.endpoint(Role::Inventory);
    let mut client = HealthClient::new(channel(&endpoint).await);
    let mut watch = client
        .watch(HealthCheckRequest {
            service: Role::Inventory.grpc_service().to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    sys.trigger.fire();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("a health update after shutdown")
        .expect("the stream is still open while draining")
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    tokio::time::timeout(Duration::from_secs(10), sys.system.wait())
        .await
        .expect("servers stop within the drain timeout")
        .unwrap();
}

/// One connection cannot open more streams than `--max-concurrent-streams`: a further call on it
/// waits until a stream closes.
#[tokio::test]
async fn streams_per_connection_are_bounded() {
    let mut settings = crate::helpers::test_settings();
    settings.limits.max_concurrent_streams = 1;
    let sys = crate::helpers::spawn_system_with(settings).await;
    let endpoint = sys.endpoint(Role::Cart);
    let connection = channel(&endpoint).await;
    let mut watcher = HealthClient::new(connection.clone());
    let mut watch = watcher
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(watch.next().await.is_some(), "the watch is open");

    let mut second = HealthClient::new(connection.clone());
    let queued = tokio::time::timeout(
        Duration::from_millis(500),
        second.check(HealthCheckRequest::default()),
    )
    .await;
    assert!(queued.is_err(), "a second stream was admitted: {queued:?}");

    drop(watch);
    drop(watcher);
    let admitted = tokio::time::timeout(
        Duration::from_secs(5),
        HealthClient::new(connection).check(HealthCheckRequest::default()),
    )
    .await
    .expect("the call runs once the stream closed");
    assert!(admitted.is_ok(), "{admitted:?}");
    sys.system.stop().await.unwrap();
}
