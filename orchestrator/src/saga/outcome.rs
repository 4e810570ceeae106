//! Outcome classification: what a step's gRPC status means for the saga. The one place that
//! decides it; an exhaustive match, so a new code cannot slip through undecided.

use tonic::Code;

/// What an attempt's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Success,
    /// Refused for a business reason: retrying cannot help; compensate.
    BusinessFailure,
    /// Failed without effect (refused before or rolled back): retry with backoff.
    Transient,
    /// May have taken effect (timeout, lost connection): retry the same command, and compensate
    /// this step too if the saga compensates.
    Ambiguous,
}

impl Outcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::BusinessFailure => "business_failure",
            Outcome::Transient => "transient",
            Outcome::Ambiguous => "ambiguous",
        }
    }
}

/// Classifies a status code.
pub fn classify(code: Code) -> Outcome {
    match code {
        Code::Ok => Outcome::Success,
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unauthenticated
        | Code::Unimplemented => Outcome::BusinessFailure,
        // Our services answer these only when nothing was committed.
        Code::Aborted | Code::ResourceExhausted | Code::Internal => Outcome::Transient,
        // The command may have been applied before the answer went missing.
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Unknown
        | Code::Cancelled
        | Code::DataLoss => Outcome::Ambiguous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_the_design() {
        assert_eq!(classify(Code::Ok), Outcome::Success);
        assert_eq!(classify(Code::FailedPrecondition), Outcome::BusinessFailure);
        assert_eq!(classify(Code::Aborted), Outcome::Transient);
        assert_eq!(classify(Code::DeadlineExceeded), Outcome::Ambiguous);
        assert_eq!(classify(Code::Unavailable), Outcome::Ambiguous);
        assert_eq!(classify(Code::Unknown), Outcome::Ambiguous);
    }
}
