//! The payment state machine. Every rule is an exhaustive match, so a new state does not
//! compile until each rule decides about it.

use checkout_proto::payment::PaymentState as Proto;

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Authorization requested; the processor's answer is not recorded yet.
    Pending,
    /// The amount is held on the card.
    Authorized,
    /// Capture requested; the processor's answer is not recorded yet.
    Capturing,
    /// Money moved.
    Captured,
    /// Part of the captured amount was refunded.
    PartiallyRefunded,
    /// All of the captured amount was refunded.
    Refunded,
    /// Void requested; the processor's answer is not recorded yet.
    Voiding,
    /// The authorization was released.
    Voided,
    /// The processor declined.
    Declined,
    /// The processor failed for good.
    Failed,
    /// Voided before any authorization: a late authorization is refused.
    Tombstone,
}

impl State {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Authorized => "authorized",
            State::Capturing => "capturing",
            State::Captured => "captured",
            State::PartiallyRefunded => "partially_refunded",
            State::Refunded => "refunded",
            State::Voiding => "voiding",
            State::Voided => "voided",
            State::Declined => "declined",
            State::Failed => "failed",
            State::Tombstone => "tombstone",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "pending" => State::Pending,
            "authorized" => State::Authorized,
            "capturing" => State::Capturing,
            "captured" => State::Captured,
            "partially_refunded" => State::PartiallyRefunded,
            "refunded" => State::Refunded,
            "voiding" => State::Voiding,
            "voided" => State::Voided,
            "declined" => State::Declined,
            "failed" => State::Failed,
            "tombstone" => State::Tombstone,
            _ => return None,
        })
    }

    /// The state clients see: in-flight states show where the money still is.
    pub fn to_proto(self) -> Proto {
        match self {
            State::Pending => Proto::Pending,
            State::Authorized | State::Capturing | State::Voiding => Proto::Authorized,
            State::Captured => Proto::Captured,
            State::PartiallyRefunded => Proto::PartiallyRefunded,
            State::Refunded => Proto::Refunded,
            State::Voided => Proto::Voided,
            State::Declined => Proto::Declined,
            State::Failed => Proto::Failed,
            State::Tombstone => Proto::Tombstone,
        }
    }

    /// True when no transition leaves this state.
    pub fn is_terminal(self) -> bool {
        match self {
            State::Refunded
            | State::Voided
            | State::Declined
            | State::Failed
            | State::Tombstone => true,
            State::Pending
            | State::Authorized
            | State::Capturing
            | State::Captured
            | State::PartiallyRefunded
            | State::Voiding => false,
        }
    }

    /// True when the machine allows going from `self` to `next`.
    pub fn can_transition_to(self, next: State) -> bool {
        use State::*;
        match self {
            Pending => matches!(next, Authorized | Declined | Failed | Voiding),
            Authorized => matches!(next, Capturing | Voiding),
            Capturing => matches!(next, Captured | Failed),
            Captured => matches!(next, PartiallyRefunded | Refunded),
            PartiallyRefunded => matches!(next, PartiallyRefunded | Refunded),
            Voiding => matches!(next, Voided),
            Refunded | Voided | Declined | Failed | Tombstone => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [State; 11] = [
        State::Pending,
        State::Authorized,
        State::Capturing,
        State::Captured,
        State::PartiallyRefunded,
        State::Refunded,
        State::Voiding,
        State::Voided,
        State::Declined,
        State::Failed,
        State::Tombstone,
    ];

    #[test]
    fn names_round_trip() {
        for state in ALL {
            assert_eq!(State::parse(state.as_str()), Some(state));
        }
        assert_eq!(State::parse("bogus"), None);
    }

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in ALL {
            let exits = ALL.iter().filter(|to| from.can_transition_to(**to)).count();
            assert_eq!(from.is_terminal(), exits == 0, "{from:?}");
        }
    }

    #[test]
    fn money_never_moves_backwards() {
        assert!(!State::Captured.can_transition_to(State::Voiding));
        assert!(!State::Voided.can_transition_to(State::Capturing));
        assert!(!State::Refunded.can_transition_to(State::Captured));
        assert!(State::Authorized.can_transition_to(State::Capturing));
        assert!(State::Authorized.can_transition_to(State::Voiding));
    }
}
