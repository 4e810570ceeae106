//! Who may call what: bearer API keys in the `authorization` metadata, checked against
//! configured SHA-256 hashes (keys themselves are never stored), and a per-method policy.
//!
//! Two classes of caller exist. A storefront key opens the storefront-facing RPCs
//! (CheckoutService and the cart's shopping RPCs). The internal credential, which the
//! orchestrator presents to the services it drives and operators use, opens every RPC.
//! Missing or unknown keys are UNAUTHENTICATED; a storefront key on an internal RPC is
//! PERMISSION_DENIED. Health and reflection stay open unless configured otherwise.

pub mod layer;

use std::fmt;

use sha2::{Digest, Sha256};

/// The metadata key a credential travels in.
pub const AUTHORIZATION: &str = "authorization";

/// A secret that never shows in `Debug` or `Display` output (logs, errors, traces).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// A key read from a file (surrounding whitespace, such as a final newline, is dropped).
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Self> {
        Ok(Self(std::fs::read_to_string(path)?.trim().to_owned()))
    }

    /// A fresh random API key (256 bits, hex) for this run or for `checkout keygen`.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(format!("ck_{}", hex(&bytes)))
    }

    /// The secret itself; call only where it is sent or hashed.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash servers are configured with.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The SHA-256 of an API key: what servers store and compare against.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// The hash of a presented key.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Parses 64 hex digits (as `checkout keygen` prints them).
    pub fn parse(hex_digits: &str) -> Result<Self, AuthConfigError> {
        let digits = hex_digits.trim();
        let invalid = || AuthConfigError::BadHash(digits.chars().take(8).collect());
        if digits.len() != 64 || !digits.is_ascii() {
            return Err(invalid());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
        }
        Ok(Self(bytes))
    }

    /// Lower-case hex, for configuration files and `keygen`.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Compares without an early exit, so timing says nothing about how much matched.
    fn matches(&self, other: &KeyHash) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A configured hash is not 64 hex digits.
    #[error("a key hash must be 64 hex digits (the SHA-256 of the key); got `{0}…`")]
    BadHash(String),
    /// A key that cannot travel in gRPC metadata.
    #[error("an API key must be printable ASCII without spaces")]
    BadKey,
    /// Enforcement was asked for without any internal key hash.
    #[error("no internal key hash configured: set --internal-key-sha256 or pass --auth-disabled")]
    NoInternalKey,
}

/// The class of caller a valid credential identifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A storefront backend: storefront-facing RPCs only.
    Storefront,
    /// The orchestrator or an operator: every RPC.
    Internal,
    /// Nobody was checked: authentication is disabled (development mode).
    Unchecked,
}

impl Caller {
    /// The caller a handler is serving, as the auth layer recorded it.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        request
            .extensions()
            .get::<Caller>()
            .copied()
            .unwrap_or(Caller::Unchecked)
    }

    /// True for callers that may act for any customer (list every checkout, say).
    pub fn is_privileged(self) -> bool {
        matches!(self, Caller::Internal | Caller::Unchecked)
    }
}

/// What an RPC demands of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credential needed (health and reflection when left open).
    Open,
    /// A storefront key or the internal credential.
    Storefront,
    /// The internal credential only.
    Internal,
}

/// The full method names (`/package.Service/Method`) the storefront may call: everything else
/// except the open ones needs the internal credential.
const STOREFRONT_METHODS: [&str; 11] = [
    "/checkout.checkout.v1.CheckoutService/StartCheckout",
    "/checkout.checkout.v1.CheckoutService/GetCheckout",
    "/checkout.checkout.v1.CheckoutService/WatchCheckout",
    "/checkout.checkout.v1.CheckoutService/ListCheckouts",
    "/checkout.checkout.v1.CheckoutService/CancelCheckout",
    "/checkout.cart.v1.CartService/ListProducts",
    "/checkout.cart.v1.CartService/CreateCart",
    "/checkout.cart.v1.CartService/GetCart",
    "/checkout.cart.v1.CartService/AddItem",
    "/checkout.cart.v1.CartService/UpdateItem",
    "/checkout.cart.v1.CartService/RemoveItem",
];

const HEALTH_AND_REFLECTION: [&str; 2] = ["/grpc.health.v1.", "/grpc.reflection."];

/// The keys a server accepts, and whether health and reflection need one.
#[derive(Clone)]
pub struct Keyring {
    storefront: Vec<KeyHash>,
    internal: Vec<KeyHash>,
    open_health: bool,
}

impl Keyring {
    /// Accepts these storefront and internal key hashes (several of each, for rotation).
    pub fn new(storefront: Vec<KeyHash>, internal: Vec<KeyHash>) -> Result<Self, AuthConfigError> {
        if internal.is_empty() {
            return Err(AuthConfigError::NoInternalKey);
        }
        Ok(Self {
            storefront,
            internal,
            open_health: true,
        })
    }

    /// Whether health and reflection answer without a key (the default) or need one.
    pub fn with_open_health(mut self, open: bool) -> Self {
        self.open_health = open;
        self
    }

    /// What `path` demands.
    pub fn access(&self, path: &str) -> Access {
        if HEALTH_AND_REFLECTION.iter().any(|p| path.starts_with(p)) {
            if self.open_health {
                Access::Open
            } else {
                Access::Storefront
            }
        } else if STOREFRONT_METHODS.contains(&path) {
            Access::Storefront
        } else {
            Access::Internal
        }
    }

    /// Who presented `credential` (the `authorization` value), if anyone we know.
    pub fn identify(&self, credential: Option<&[u8]>) -> Option<Caller> {
        let key = bearer_token(credential?)?;
        let presented = KeyHash::of(key);
        // Check every hash, so the time taken does not reveal which list matched.
        let internal = self
            .internal
            .iter()
            .fold(false, |hit, h| hit | h.matches(&presented));
        let storefront = self
            .storefront
            .iter()
            .fold(false, |hit, h| hit | h.matches(&presented));
        if internal {
            Some(Caller::Internal)
        } else if storefront {
            Some(Caller::Storefront)
        } else {
            None
        }
    }

    /// The verdict on one call.
    pub fn check(&self, path: &str, credential: Option<&[u8]>) -> Result<Option<Caller>, Denial> {
        let access = self.access(path);
        if access == Access::Open {
            return Ok(None);
        }
        if credential.is_none() {
            return Err(Denial::Missing);
        }
        match (access, self.identify(credential)) {
            (_, None) => Err(Denial::Unknown),
            (Access::Internal, Some(Caller::Storefront)) => Err(Denial::NotAllowed),
            (_, Some(caller)) => Ok(Some(caller)),
        }
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("storefront_keys", &self.storefront.len())
            .field("internal_keys", &self.internal.len())
            .field("open_health", &self.open_health)
            .finish()
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No `authorization` metadata.
    Missing,
    /// A credential that matches no configured key (or is not `Bearer <key>`).
    Unknown,
    /// A valid storefront key on an internal RPC.
    NotAllowed,
}

impl Denial {
    /// The status the caller gets; it never echoes the credential.
    pub fn status(self) -> tonic::Status {
        use crate::status::Rejection;
        use tonic::Code;
        match self {
            Denial::Missing => Rejection::new(
                Code::Unauthenticated,
                "CREDENTIAL_MISSING",
                "an API key is required: send `authorization: Bearer <key>`",
            ),
            Denial::Unknown => Rejection::new(
                Code::Unauthenticated,
                "CREDENTIAL_INVALID",
                "the API key is not valid",
            ),
            Denial::NotAllowed => Rejection::new(
                Code::PermissionDenied,
                "CREDENTIAL_NOT_ALLOWED",
                "this RPC needs the internal credential; storefront keys cannot call it",
            ),
        }
        .into_status()
    }
}

/// How a server treats credentials.
#[derive(Debug, Clone)]
pub enum AuthPolicy {
    /// Keys are checked on every call but the open ones.
    Enforced(Keyring),
    /// Development mode, asked for explicitly: nobody is checked.
    Disabled,
}

impl AuthPolicy {
    /// True when calls go unchecked.
    pub fn is_disabled(&self) -> bool {
        matches!(self, AuthPolicy::Disabled)
    }
}

/// A storefront key and an internal key, generated together for one run or one test.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// What storefront backends present.
    pub storefront: Secret,
    /// What the orchestrator and operators present.
    pub internal: Secret,
}

impl Credentials {
    /// Two fresh random keys.
    pub fn generate() -> Self {
        Self {
            storefront: Secret::generate(),
            internal: Secret::generate(),
        }
    }

    /// The keyring servers check these keys against (only their hashes).
    pub fn keyring(&self) -> Keyring {
        Keyring {
            storefront: vec![self.storefront.hash()],
            internal: vec![self.internal.hash()],
            open_health: true,
        }
    }

    /// The storefront key as a client credential.
    pub fn storefront_bearer(&self) -> Bearer {
        Bearer::new(&self.storefront).expect("generated keys are ASCII")
    }

    /// The internal key as a client credential.
    pub fn internal_bearer(&self) -> Bearer {
        Bearer::new(&self.internal).expect("generated keys are ASCII")
    }
}

/// The credential a client presents: the key, as a ready `authorization` value.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::AsciiMetadataValue);

impl Bearer {
    /// `Bearer <key>`, marked sensitive so HTTP/2 header compression leaves it out of its table.
    pub fn new(key: &Secret) -> Result<Self, AuthConfigError> {
        let mut value = format!("Bearer {}", key.expose())
            .parse::<tonic::metadata::AsciiMetadataValue>()
            .map_err(|_| AuthConfigError::BadKey)?;
        value.set_sensitive(true);
        Ok(Self(value))
    }

    /// Puts the credential on an outgoing request.
    pub fn apply(&self, metadata: &mut tonic::metadata::MetadataMap) {
        metadata.insert(AUTHORIZATION, self.0.clone());
    }
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bearer([redacted])")
    }
}

fn bearer_token(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
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

#[cfg(test)]
mod tests {
    use super::*;

    const CART_ADD: &str = "/checkout.cart.v1.CartService/AddItem";
    const CART_LOCK: &str = "/checkout.cart.v1.CartService/LockCart";
    const RESERVE: &str = "/checkout.inventory.v1.InventoryService/ReserveStock";
    const RETRY: &str = "/checkout.checkout.v1.CheckoutService/RetryCheckout";
    const HEALTH: &str = "/grpc.health.v1.Health/Check";

    fn ring() -> (Keyring, Secret, Secret) {
        let storefront = Secret::new("sf-key");
        let internal = Secret::new("int-key");
        let ring = Keyring::new(vec![storefront.hash()], vec![internal.hash()]).unwrap();
        (ring, storefront, internal)
    }

    fn bearer(key: &Secret) -> Vec<u8> {
        format!("Bearer {}", key.expose()).into_bytes()
    }

    #[test]
    fn storefront_keys_open_storefront_rpcs_only() {
        let (ring, storefront, _) = ring();
        let sf = bearer(&storefront);
        assert_eq!(
            ring.check(CART_ADD, Some(&sf)),
            Ok(Some(Caller::Storefront))
        );
        for internal_rpc in [
            CART_LOCK,
            RESERVE,
            RETRY,
            "/checkout.fault.v1.FaultService/ListRules",
        ] {
            assert_eq!(
                ring.check(internal_rpc, Some(&sf)),
                Err(Denial::NotAllowed),
                "{internal_rpc}"
            );
        }
    }

    #[test]
    fn the_internal_credential_opens_everything() {
        let (ring, _, internal) = ring();
        let int = bearer(&internal);
        for path in [CART_ADD, CART_LOCK, RESERVE, RETRY] {
            assert_eq!(
                ring.check(path, Some(&int)),
                Ok(Some(Caller::Internal)),
                "{path}"
            );
        }
    }

    #[test]
    fn missing_and_wrong_credentials_are_unauthenticated() {
        let (ring, storefront, _) = ring();
        assert_eq!(ring.check(CART_ADD, None), Err(Denial::Missing));
        assert_eq!(
            ring.check(RESERVE, Some(b"Bearer nope")),
            Err(Denial::Unknown)
        );
        // The key alone, without the scheme, is not a bearer credential.
        assert_eq!(
            ring.check(CART_ADD, Some(storefront.expose().as_bytes())),
            Err(Denial::Unknown)
        );
        assert_eq!(ring.check(CART_ADD, Some(b"Bearer ")), Err(Denial::Unknown));
        assert_eq!(
            ring.check(CART_ADD, Some(&[0xff, 0xfe])),
            Err(Denial::Unknown)
        );
        assert_eq!(
            Denial::Missing.status().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            Denial::NotAllowed.status().code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn health_and_reflection_are_open_unless_configured() {
        let (ring, storefront, _) = ring();
        assert_eq!(ring.check(HEALTH, None), Ok(None));
        let closed = ring.with_open_health(false);
        assert_eq!(closed.check(HEALTH, None), Err(Denial::Missing));
        assert_eq!(
            closed.check(HEALTH, Some(&bearer(&storefront))),
            Ok(Some(Caller::Storefront))
        );
    }

    #[test]
    fn hashes_parse_from_hex_and_secrets_never_print() {
        let key = Secret::generate();
        let hash = key.hash();
        assert_eq!(KeyHash::parse(&hash.to_hex()).unwrap(), hash);
        assert!(KeyHash::parse("abc").is_err());
        assert!(KeyHash::parse(&"zz".repeat(32)).is_err());
        assert!(!format!("{key:?}").contains(key.expose()));
        assert!(!format!("{:?}", Bearer::new(&key).unwrap()).contains(key.expose()));
        assert!(!format!("{hash:?}").contains(&hash.to_hex()));
        assert!(Keyring::new(vec![hash], vec![]).is_err());
    }
}
