//! Fault injection (DESIGN §7): rules that make a server fail on purpose — an error before
//! handling, a delay, a lost response after the effect committed, or the process aborting
//! before or after handling — chosen by RPC pattern and a seeded probability.
//!
//! * [`FaultControl`]: the rules of one server, whether injection is allowed, and the counters.
//! * [`layer`]: the tower layer that applies the rules to every request.
//! * [`service`]: `FaultService`, to change the rules at runtime (refused unless allowed).

pub mod layer;
pub mod service;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use checkout_proto::fault::{FaultKind, FaultRule};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tonic::Code;

/// What a hit rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Answer an error before handling.
    ErrorBefore,
    /// Wait, then handle.
    Delay,
    /// Handle (the effect commits), then answer UNAVAILABLE instead.
    DropResponseUnavailable,
    /// Handle (the effect commits), then answer DEADLINE_EXCEEDED instead.
    DropResponseDeadlineExceeded,
    /// Abort the process before handling.
    CrashBefore,
    /// Abort the process after handling.
    CrashAfter,
}

impl Kind {
    /// The contract's value.
    pub fn to_proto(self) -> FaultKind {
        match self {
            Kind::ErrorBefore => FaultKind::ErrorBefore,
            Kind::Delay => FaultKind::Delay,
            Kind::DropResponseUnavailable => FaultKind::DropResponseUnavailable,
            Kind::DropResponseDeadlineExceeded => FaultKind::DropResponseDeadlineExceeded,
            Kind::CrashBefore => FaultKind::CrashBefore,
            Kind::CrashAfter => FaultKind::CrashAfter,
        }
    }

    /// From the contract's value.
    pub fn from_proto(kind: FaultKind) -> Option<Self> {
        Some(match kind {
            FaultKind::ErrorBefore => Kind::ErrorBefore,
            FaultKind::Delay => Kind::Delay,
            FaultKind::DropResponseUnavailable => Kind::DropResponseUnavailable,
            FaultKind::DropResponseDeadlineExceeded => Kind::DropResponseDeadlineExceeded,
            FaultKind::CrashBefore => Kind::CrashBefore,
            FaultKind::CrashAfter => Kind::CrashAfter,
            FaultKind::Unspecified => return None,
        })
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::ErrorBefore => "error_before",
            Kind::Delay => "delay",
            Kind::DropResponseUnavailable => "drop_response_unavailable",
            Kind::DropResponseDeadlineExceeded => "drop_response_deadline_exceeded",
            Kind::CrashBefore => "crash_before",
            Kind::CrashAfter => "crash_after",
        }
    }
}

/// One rule, as configuration files and flags write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Rule id (assigned when empty).
    #[serde(default)]
    pub rule_id: String,
    /// Full method glob: `*` matches any run of characters
    /// (`/checkout.payment.v1.PaymentService/*`).
    pub rpc_pattern: String,
    /// Chance that a matching request is hit, from 0 to 1.
    pub probability: f64,
    /// What a hit does.
    pub kind: Kind,
    /// The gRPC code answered by `error_before` (default UNAVAILABLE).
    #[serde(default = "unavailable")]
    pub error_code: i32,
    /// The wait of `delay`, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
    /// Hits after which the rule stops; 0 for no limit.
    #[serde(default)]
    pub max_hits: u64,
    /// Requests hit so far.
    #[serde(default, skip_deserializing)]
    pub hits: u64,
}

fn unavailable() -> i32 {
    Code::Unavailable as i32
}

/// A rule that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("fault rule {field}: {problem}")]
pub struct RuleError {
    /// Which field.
    pub field: String,
    /// What is wrong.
    pub problem: &'static str,
}

impl Rule {
    /// Checks a rule; `field` prefixes the names in errors.
    pub fn validate(&self, field: &str) -> Result<(), RuleError> {
        let bad = |name: &str, problem| RuleError {
            field: format!("{field}.{name}"),
            problem,
        };
        if !(self.rpc_pattern.starts_with('/') || self.rpc_pattern.starts_with('*'))
            || self.rpc_pattern.len() > 256
        {
            return Err(bad(
                "rpc_pattern",
                "a full method glob such as /pkg.Service/* (at most 256)",
            ));
        }
        if !(0.0..=1.0).contains(&self.probability) || self.probability.is_nan() {
            return Err(bad("probability", "between 0 and 1"));
        }
        if self.kind == Kind::ErrorBefore && (self.error_code <= 0 || self.error_code > 16) {
            return Err(bad("error_code", "a google.rpc.Code from 1 to 16"));
        }
        if self.kind == Kind::Delay && self.delay_ms > 60_000 {
            return Err(bad("delay", "at most 60 seconds"));
        }
        Ok(())
    }

    /// True when the rule applies to this full method path.
    pub fn matches(&self, path: &str) -> bool {
        glob(&self.rpc_pattern, path)
    }

    /// The contract's form.
    pub fn to_proto(&self) -> FaultRule {
        FaultRule {
            rule_id: self.rule_id.clone(),
            rpc_pattern: self.rpc_pattern.clone(),
            probability: self.probability,
            kind: self.kind.to_proto().into(),
            error_code: self.error_code,
            delay: Some(prost_types::Duration {
                seconds: i64::try_from(self.delay_ms / 1000).unwrap_or(0),
                nanos: i32::try_from((self.delay_ms % 1000) * 1_000_000).unwrap_or(0),
            }),
            max_hits: i64::try_from(self.max_hits).unwrap_or(i64::MAX),
            hits: i64::try_from(self.hits).unwrap_or(i64::MAX),
        }
    }

    /// From the contract's form.
    pub fn from_proto(rule: &FaultRule, field: &str) -> Result<Self, RuleError> {
        let kind = Kind::from_proto(rule.kind()).ok_or(RuleError {
            field: format!("{field}.kind"),
            problem: "required",
        })?;
        let delay_ms = rule.delay.as_ref().map_or(0, |d| {
            u64::try_from(d.seconds).unwrap_or(0) * 1000
                + u64::try_from(d.nanos).unwrap_or(0) / 1_000_000
        });
        let parsed = Self {
            rule_id: rule.rule_id.clone(),
            rpc_pattern: rule.rpc_pattern.clone(),
            probability: rule.probability,
            kind,
            error_code: if rule.error_code == 0 {
                unavailable()
            } else {
                rule.error_code
            },
            delay_ms,
            max_hits: u64::try_from(rule.max_hits).unwrap_or(0),
            hits: 0,
        };
        parsed.validate(field)?;
        Ok(parsed)
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Whether fault injection is allowed, the initial rules and the seed.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    /// FaultService refuses every call unless this is set.
    pub allowed: bool,
    /// Rules active from the start.
    pub rules: Vec<Rule>,
    /// Seed of the rules' randomness (the same seed, the same choices for the same requests).
    pub seed: u64,
}

#[derive(Debug)]
struct State {
    rules: Vec<Rule>,
    seed: u64,
    rng: StdRng,
    next_id: u64,
}

/// What the layer does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing: handle normally.
    Pass,
    /// Answer this code without handling.
    Fail(Code),
    /// Wait, then handle.
    Delay(Duration),
    /// Handle, then answer this code instead.
    Drop(Code),
    /// Abort before handling.
    CrashBefore,
    /// Handle, then abort.
    CrashAfter,
}

/// The fault rules of one server.
#[derive(Debug, Clone)]
pub struct FaultControl {
    allowed: bool,
    state: Arc<Mutex<State>>,
}

impl FaultControl {
    /// Rules from configuration (ids assigned to rules without one).
    pub fn new(config: FaultConfig) -> Self {
        let control = Self {
            allowed: config.allowed,
            state: Arc::new(Mutex::new(State {
                rules: Vec::new(),
                seed: config.seed,
                rng: StdRng::seed_from_u64(config.seed),
                next_id: 1,
            })),
        };
        control.replace(config.rules, config.seed);
        control
    }

    /// No faults, and FaultService refuses.
    pub fn disabled() -> Self {
        Self::new(FaultConfig::default())
    }

    /// True when FaultService may change the rules.
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data; keep using it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The active rules and the seed.
    pub fn rules(&self) -> (Vec<Rule>, u64) {
        let state = self.lock();
        (state.rules.clone(), state.seed)
    }

    /// Replaces every rule and reseeds.
    pub fn replace(&self, rules: Vec<Rule>, seed: u64) -> Vec<Rule> {
        let mut state = self.lock();
        state.rules.clear();
        state.seed = seed;
        state.rng = StdRng::seed_from_u64(seed);
        for mut rule in rules {
            if rule.rule_id.is_empty() {
                rule.rule_id = format!("rule-{}", state.next_id);
                state.next_id += 1;
            }
            rule.hits = 0;
            state.rules.push(rule);
        }
        state.rules.clone()
    }

    /// Adds a rule, or replaces the one with the same id.
    pub fn add(&self, mut rule: Rule) -> Rule {
        let mut state = self.lock();
        if rule.rule_id.is_empty() {
            rule.rule_id = format!("rule-{}", state.next_id);
            state.next_id += 1;
        }
        rule.hits = 0;
        state.rules.retain(|r| r.rule_id != rule.rule_id);
        state.rules.push(rule.clone());
        rule
    }

    /// Removes every rule; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut state = self.lock();
        let n = state.rules.len();
        state.rules.clear();
        n
    }

    /// Decides what happens to a request for `path`: the first matching rule that is not
    /// exhausted and whose draw hits.
    pub fn verdict(&self, path: &str) -> Verdict {
        let mut state = self.lock();
        if state.rules.is_empty() {
            return Verdict::Pass;
        }
        let State { rules, rng, .. } = &mut *state;
        for rule in rules.iter_mut() {
            if !rule.matches(path) || (rule.max_hits > 0 && rule.hits >= rule.max_hits) {
                continue;
            }
            if rng.random::<f64>() >= rule.probability {
                continue;
            }
            rule.hits += 1;
            return match rule.kind {
                Kind::ErrorBefore => Verdict::Fail(Code::from_i32(rule.error_code)),
                Kind::Delay => Verdict::Delay(Duration::from_millis(rule.delay_ms)),
                Kind::DropResponseUnavailable => Verdict::Drop(Code::Unavailable),
                Kind::DropResponseDeadlineExceeded => Verdict::Drop(Code::DeadlineExceeded),
                Kind::CrashBefore => Verdict::CrashBefore,
                Kind::CrashAfter => Verdict::CrashAfter,
            };
        }
        Verdict::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, probability: f64, kind: Kind) -> Rule {
        Rule {
            rule_id: String::new(),
            rpc_pattern: pattern.to_owned(),
            probability,
            kind,
            error_code: unavailable(),
            delay_ms: 10,
            max_hits: 0,
            hits: 0,
        }
    }

    #[test]
    fn globs_match_full_method_paths() {
        assert!(glob("/a.B/*", "/a.B/Call"));
        assert!(glob("*", "/anything"));
        assert!(glob("/a.*/Get*", "/a.Svc/GetThing"));
        assert!(!glob("/a.B/*", "/a.C/Call"));
        assert!(glob("/a.B/Call", "/a.B/Call"));
        assert!(!glob("/a.B/Call", "/a.B/Calls"));
    }

    #[test]
    fn the_same_seed_makes_the_same_choices() {
        let draw = |seed| {
            let control = FaultControl::new(FaultConfig {
                allowed: true,
                rules: vec![rule("/x/*", 0.3, Kind::ErrorBefore)],
                seed,
            });
            (0..200)
                .map(|_| control.verdict("/x/Y") != Verdict::Pass)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let hits = draw(7).iter().filter(|h| **h).count();
        assert!((30..90).contains(&hits), "{hits} hits at p=0.3");
    }

    #[test]
    fn max_hits_exhausts_a_rule_and_other_paths_pass() {
        let mut limited = rule("/x/*", 1.0, Kind::Delay);
        limited.max_hits = 2;
        let control = FaultControl::new(FaultConfig {
            allowed: true,
            rules: vec![limited],
            seed: 1,
        });
        assert_eq!(control.verdict("/y/Z"), Verdict::Pass);
        assert_eq!(
            control.verdict("/x/Y"),
            Verdict::Delay(Duration::from_millis(10))
        );
        assert_eq!(
            control.verdict("/x/Y"),
            Verdict::Delay(Duration::from_millis(10))
        );
        assert_eq!(control.verdict("/x/Y"), Verdict::Pass);
        assert_eq!(control.rules().0[0].hits, 2);
    }

    #[test]
    fn bad_rules_are_refused_by_field() {
        assert!(rule("no-slash", 0.5, Kind::Delay).validate("rule").is_err());
        let err = rule("/x/*", 1.5, Kind::Delay)
            .validate("rules[0]")
            .unwrap_err();
        assert_eq!(err.field, "rules[0].probability");
        let mut bad_code = rule("/x/*", 0.5, Kind::ErrorBefore);
        bad_code.error_code = 99;
        assert!(bad_code.validate("rule").is_err());
    }
}
