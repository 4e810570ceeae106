//! Shared kit of every checkout server: database backends, server bootstrap, error details and
//! shutdown.
//!
//! # Layout
//! * [`auth`]: API keys (stored as hashes), the per-method policy and its tower layer.
//! * [`client`]: the one way to dial a server (trace context, credential, TLS).
//! * [`db`]: SQLite and PostgreSQL pools picked by URL, migrations, write transactions, and the
//!   [`on_backend!`] macro that runs one SQL body on either backend.
//! * [`fault`]: fault rules, the tower layer applying them, and `FaultService`.
//! * [`idempotency`]: the one idempotency layer behind every mutating RPC, with recovery
//!   points for effects outside the database.
//! * [`paging`]: AIP-158 page sizes and filter-bound page tokens.
//! * [`retry`]: the one retry policy type (exponential backoff, full jitter, bounded).
//! * [`runtime`]: the single-threaded runtime of a server with a core of its own.
//! * [`server`]: a gRPC server with health, reflection (v1 and v1alpha), limits, timeouts and
//!   graceful shutdown.
//! * [`status`]: `tonic::Status` with `google.rpc` `ErrorInfo` and `BadRequest` details.
//! * [`validate`]: field-level request checks collected into one `INVALID_ARGUMENT`.
//! * [`tls`]: server certificates and client trust from PEM files.
//! * [`telemetry`]: logs, OTLP traces and metrics, W3C trace context on every hop.
//! * [`shutdown`]: the SIGTERM / Ctrl-C signal shared by the servers of one process.
//! * [`testing`]: fresh databases on either backend for tests.

pub mod auth;
pub mod client;
pub mod db;
pub mod fault;
pub mod idempotency;
pub mod paging;
pub mod retry;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod validate;
