//! The gRPC contracts of the checkout system and their generated Rust code.
//!
//! # Layout
//! * `checkout/<area>/v1/*.proto` beside this crate: the contracts (`buf lint` STANDARD).
//! * [`common`], [`cart`], [`inventory`], [`payment`], [`fulfillment`], [`checkout`], [`fault`]:
//!   the generated messages, clients and servers, one module per package.
//! * [`codec`]: the codec of every client and server (malformed bodies are INVALID_ARGUMENT).
//! * `redact`: `Debug` that hides payment tokens and addresses.
//! * [`FILE_DESCRIPTOR_SET`]: the encoded descriptors that server reflection serves.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod codec;
mod redact;

/// Generated code, nested as the protobuf packages are (`checkout.<area>.v1`).
pub mod pb {
    pub mod checkout {
        pub mod common {
            pub mod v1 {
                tonic::include_proto!("checkout.common.v1");
            }
        }
        pub mod cart {
            pub mod v1 {
                tonic::include_proto!("checkout.cart.v1");
            }
        }
        pub mod inventory {
            pub mod v1 {
                tonic::include_proto!("checkout.inventory.v1");
            }
        }
        pub mod payment {
            pub mod v1 {
                tonic::include_proto!("checkout.payment.v1");
            }
        }
        pub mod fulfillment {
            pub mod v1 {
                tonic::include_proto!("checkout.fulfillment.v1");
            }
        }
        pub mod checkout {
            pub mod v1 {
                tonic::include_proto!("checkout.checkout.v1");
            }
        }
        pub mod fault {
            pub mod v1 {
                tonic::include_proto!("checkout.fault.v1");
            }
        }
    }
}

pub use pb::checkout::cart::v1 as cart;
pub use pb::checkout::checkout::v1 as checkout;
pub use pb::checkout::common::v1 as common;
pub use pb::checkout::fault::v1 as fault;
pub use pb::checkout::fulfillment::v1 as fulfillment;
pub use pb::checkout::inventory::v1 as inventory;
pub use pb::checkout::payment::v1 as payment;

/// Encoded `FileDescriptorSet` of every contract, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/checkout_descriptor.bin"));
