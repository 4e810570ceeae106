//! Fuzzing request decoding and validation over the network: random bodies, and random but
//! well-formed protobuf fields, sent to every unary RPC of every service (found in the contracts'
//! descriptors, so a new RPC is fuzzed without touching this file). No input may crash a server
//! or surface as INTERNAL / UNKNOWN. `PROPTEST_CASES` sets how many (CI runs more).

use checkout::role::Role;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{call_raw, channel, spawn_system};

/// Every unary RPC of the contracts, as `(role serving it, /package.Service/Method)`.
fn unary_rpcs() -> Vec<(Role, &'static str)> {
    let set = prost_types::FileDescriptorSet::decode(checkout_proto::FILE_DESCRIPTOR_SET)
        .expect("the contracts' descriptors decode");
    let mut rpcs = Vec::new();
    for file in set.file {
        for service in &file.service {
            let full = format!("{}.{}", file.package(), service.name());
            let role = Role::ALL
                .into_iter()
                .find(|r| r.grpc_service() == full)
                // FaultService runs on every server; the orchestrator's stands for all.
                .unwrap_or(Role::Orchestrator);
            for method in &service.method {
                if method.client_streaming() || method.server_streaming() {
                    continue;
                }
                let path: &'static str =
                    Box::leak(format!("/{full}/{}", method.name()).into_boxed_str());
                rpcs.push((role, path));
            }
        }
    }
    rpcs
}

/// One protobuf field with a random number and payload: often the right wire type for its
/// field (so validation sees strange values), often not (so decoding refuses it).
fn field() -> impl Strategy<Value = Vec<u8>> {
    let varint = (1u32..12, any::<u64>()).prop_map(|(number, value)| {
        let mut out = Vec::new();
        prost::encoding::encode_key(number, prost::encoding::WireType::Varint, &mut out);
        prost::encoding::encode_varint(value, &mut out);
        out
    });
    let bytes = (
        1u32..12,
        prop_oneof![
            ".{0,64}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..256),
            (0usize..20_000).prop_map(|n| vec![b'A'; n]),
        ],
    )
        .prop_map(|(number, payload)| {
            let mut out = Vec::new();
            prost::encoding::encode_key(
                number,
                prost::encoding::WireType::LengthDelimited,
                &mut out,
            );
            prost::encoding::encode_varint(payload.len() as u64, &mut out);
            out.extend_from_slice(&payload);
            out
        });
    prop_oneof![varint, bytes]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        proptest::collection::vec(field(), 0..8).prop_map(|fields| fields.concat()),
    ]
}

/// Codes a request may earn; anything else (INTERNAL, UNKNOWN, UNAVAILABLE, ...) is a bug.
const EXPECTED: [Code; 8] = [
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::AlreadyExists,
    Code::OutOfRange,
    Code::ResourceExhausted,
];

#[test]
fn random_bodies_to_every_rpc_are_refused_cleanly() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sys = runtime.block_on(spawn_system());
    let rpcs = unary_rpcs();
    assert!(rpcs.len() >= 35, "{} unary RPCs found", rpcs.len());
    let channels: Vec<_> = Role::ALL
        .into_iter()
        .map(|role| (role, runtime.block_on(channel(&sys.endpoint(role)))))
        .collect();
    let channel_of = |role: Role| {
        channels
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, c)| c.clone())
            .expect("a channel per role")
    };

    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (0..rpcs.len(), body());
    runner
        .run(&strategy, |(index, body)| {
            let (role, path) = rpcs[index];
            let result = runtime.block_on(call_raw(channel_of(role), path, body));
            let code = result.err().map_or(Code::Ok, |s| s.code());
            if EXPECTED.contains(&code) {
                Ok(())
            } else {
                Err(TestCaseError::fail(format!("{path} answered {code:?}")))
            }
        })
        .unwrap();

    // Every server survived and still serves.
    for role in Role::ALL {
        runtime
            .block_on(HealthClient::new(channel_of(role)).check(HealthCheckRequest::default()))
            .unwrap_or_else(|e| panic!("{role} stopped answering: {e}"));
    }
    runtime.block_on(sys.system.stop()).unwrap();
}
