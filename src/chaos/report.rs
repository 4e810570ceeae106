//! What a chaos run reports: outcomes, faults, kills, retries, compensations, invariants.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::ChaosError;
use super::check::{Databases, Verdict};

/// The result of a run.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Seed (rerun with `--seed` to repeat the schedule).
    pub seed: u64,
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Checkouts asked for.
    pub checkouts_requested: usize,
    /// Concurrency.
    pub concurrency: usize,
    /// Checkouts started.
    pub checkouts_started: usize,
    /// Checkouts whose client calls kept failing (the client gave up; not a violation).
    pub client_failures: usize,
    /// Client calls retried through faults and kills.
    pub client_retries: usize,
    /// Checkouts by final status.
    pub outcomes: BTreeMap<String, u64>,
    /// Compensated checkouts by reason.
    pub compensation_reasons: BTreeMap<String, u64>,
    /// Faults injected by kind (as counted by the servers that survived to be asked).
    pub faults_injected: BTreeMap<String, u64>,
    /// Processes SIGKILLed, by role, in order.
    pub kills: Vec<String>,
    /// Process restarts (after kills and injected crashes).
    pub restarts: usize,
    /// Step attempts the saga retried.
    pub saga_retries: u64,
    /// Compensation commands that succeeded.
    pub compensations: u64,
    /// Each invariant with its verdict.
    pub invariants: Vec<Verdict>,
    /// Wall time of the run in milliseconds.
    pub elapsed_ms: u64,
}

impl Report {
    /// True when every invariant holds.
    pub fn passed(&self) -> bool {
        self.invariants.iter().all(|v| v.holds)
    }

    /// Fills the outcome counts from the orchestrator's database.
    pub async fn collect_outcomes(&mut self, dbs: &Databases) -> Result<(), ChaosError> {
        let mut tx = dbs.orchestrator.begin_read().await?;
        let sagas = checkout_orchestrator::store::audit_sagas(&mut tx).await?;
        let attempts = checkout_orchestrator::store::audit_attempt_counts(&mut tx).await?;
        tx.rollback().await?;
        for saga in &sagas {
            *self.outcomes.entry(saga.status.clone()).or_default() += 1;
            if saga.status == "compensated" {
                *self
                    .compensation_reasons
                    .entry(saga.failure_reason.clone())
                    .or_default() += 1;
            }
        }
        for (direction, outcome, count) in attempts {
            let count = u64::try_from(count).unwrap_or(0);
            if direction == "compensation" && outcome == "success" {
                self.compensations += count;
            }
            if outcome == "transient" || outcome == "ambiguous" {
                self.saga_retries += count;
            }
        }
        Ok(())
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "chaos run: seed {}, {} backend, {} checkouts at concurrency {}, {:.1} s",
            self.seed,
            self.backend,
            self.checkouts_requested,
            self.concurrency,
            self.elapsed_ms as f64 / 1000.0
        );
        let _ = writeln!(out, "checkouts by outcome:");
        for (status, n) in &self.outcomes {
            let _ = writeln!(out, "  {status:<16} {n}");
        }
        for (reason, n) in &self.compensation_reasons {
            let _ = writeln!(out, "    compensated: {reason:<28} {n}");
        }
        let _ = writeln!(out, "faults injected:");
        for (kind, n) in &self.faults_injected {
            let _ = writeln!(out, "  {kind:<34} {n}");
        }
        let _ = writeln!(
            out,
            "kills: {} ({}), restarts: {}",
            self.kills.len(),
            self.kills.join(", "),
            self.restarts
        );
        let _ = writeln!(
            out,
            "saga retries: {}, compensations: {}, client retries: {}, client give-ups: {}",
            self.saga_retries, self.compensations, self.client_retries, self.client_failures
        );
        let _ = writeln!(out, "invariants:");
        for v in &self.invariants {
            let _ = writeln!(
                out,
                "  {} {:<32} {}",
                if v.holds { "ok  " } else { "FAIL" },
                v.name,
                v.description
            );
            for violation in &v.violations {
                let _ = writeln!(out, "        {violation}");
            }
            if v.violation_count > v.violations.len() {
                let _ = writeln!(
                    out,
                    "        … {} more",
                    v.violation_count - v.violations.len()
                );
            }
        }
        let _ = writeln!(
            out,
            "{}",
            if self.passed() {
                "all invariants hold"
            } else {
                "INVARIANTS VIOLATED"
            }
        );
        out
    }
}
