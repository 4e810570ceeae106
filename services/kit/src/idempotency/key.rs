//! Idempotency keys: the RPC scope, the normalized `request_id`, and the request fingerprint.

use prost::Message;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::status::Rejection;

/// A mutating request that carries a `request_id` (AIP-155).
pub trait IdempotentRequest: Message + Clone {
    /// The caller's request id as sent.
    fn request_id(&self) -> &str;
    /// The same request with its `request_id` emptied: the canonical form that is hashed.
    fn without_request_id(&self) -> Self;
}

/// One idempotency key: which RPC, which request id, and what request it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    scope: &'static str,
    request_id: String,
    fingerprint: [u8; 32],
}

impl Key {
    /// The key of a request to the RPC `scope` (its full method name, such as
    /// `/checkout.cart.v1.CartService/AddItem`). A `request_id` that is not a UUID is refused
    /// with `INVALID_ARGUMENT` naming the field.
    pub fn new<R: IdempotentRequest>(scope: &'static str, request: &R) -> Result<Self, Status> {
        let request_id = normalize_request_id(request.request_id())?;
        Ok(Self {
            scope,
            request_id,
            fingerprint: fingerprint(scope, &request.without_request_id()),
        })
    }

    /// The RPC this key belongs to.
    pub fn scope(&self) -> &'static str {
        self.scope
    }

    /// The request id in canonical (lower-case, hyphenated) form.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// SHA-256 of the scope and the request's canonical encoding without its request id.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// A stable key for an external system: the same for every retry of this request.
    pub fn external_key(&self) -> String {
        let digest = Sha256::new()
            .chain_update(self.scope.as_bytes())
            .chain_update([0])
            .chain_update(self.request_id.as_bytes())
            .finalize();
        hex(&digest[..16])
    }
}

/// Parses a `request_id` as a UUID and returns its canonical form.
pub fn normalize_request_id(request_id: &str) -> Result<String, Status> {
    if request_id.is_empty() {
        return Err(Rejection::invalid_field("request_id", "required: a UUID").into_status());
    }
    uuid::Uuid::try_parse(request_id)
        .map(|id| id.hyphenated().to_string())
        .map_err(|_| Rejection::invalid_field("request_id", "must be a UUID").into_status())
}

/// The fingerprint of a request already stripped of its request id. prost encodes fields in
/// field-number order and the request messages hold no maps, so the encoding is canonical.
fn fingerprint<M: Message>(scope: &str, canonical: &M) -> [u8; 32] {
    Sha256::new()
        .chain_update(scope.as_bytes())
        .chain_update([0])
        .chain_update(canonical.encode_to_vec())
        .finalize()
        .into()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
