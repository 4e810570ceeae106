//! The `checkout` binary's library: every role of the system behind one command line.
//!
//! # Layout
//! * [`role`]: the five servers and what each owns (migrations, default port).
//! * [`bench`]: checkouts per second, latency percentiles, commits and CPU per checkout.
//! * [`chaos`]: the failure-injection runner and its invariant checks.
//! * [`config`]: command-line flags, each with a `CHECKOUT_*` environment variable.
//! * [`demo`]: three checkouts on a temporary system, with their timelines.
//! * [`islands`]: one single-threaded runtime per core, each server on one, for `up`.
//! * [`launch`]: opening databases, binding listeners and running servers, for `up`, `serve` and
//!   `migrate`, and for tests that start real servers on port 0.
//! * [`security`]: API key, development mode and TLS flags, and `keygen`.

pub mod bench;
pub mod chaos;
pub mod config;
pub mod demo;
pub mod islands;
pub mod launch;
pub mod role;
pub mod security;
