//! The generic saga engine: definitions, outcome classification, and the state machine.

pub mod definition;
pub mod machine;
pub mod outcome;
