//! The chaos runner: a short run holds every invariant, and the checker reports each invariant
//! by name, with a non-zero exit, when it is violated on purpose in a copy of the data.

use std::path::Path;
use std::process::{Command, Stdio};

use sqlx::Connection;

use checkout_kit::db::Backend;
use checkout_kit::testing;

fn checkout() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_checkout"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CHECKOUT_") {
            command.env_remove(key);
        }
    }
    command.env("RUST_LOG", "error").stdin(Stdio::null());
    command
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

async fn corrupt(dir: &Path, db: &str, sql: &str) {
    let url = format!("sqlite://{}", dir.join(format!("{db}.db")).display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    // A corrupted copy may break what the schema would refuse.
    sqlx::query("PRAGMA ignore_check_constraints = ON")
        .execute(&mut conn)
        .await
        .unwrap();
    let done = sqlx::query(sql).execute(&mut conn).await.unwrap();
    assert!(done.rows_affected() > 0, "{sql} changed nothing");
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_holds_and_the_checker_names_each_violation() {
    if testing::backend() != Backend::Sqlite {
        // The copies are SQLite files; the Postgres leg runs chaos from .ci/run.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("run");
    let output = checkout()
        .args([
            "chaos",
            "--checkouts",
            "40",
            "--concurrency",
            "4",
            "--kills",
            "2",
            "--seed",
            "7",
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("all invariants hold"), "{stdout}");
    assert!(
        stdout.contains("  completed"),
        "the run completed some checkouts: {stdout}"
    );

    let cases = [
        (
            "every_saga_terminal",
            "orchestrator",
            "UPDATE sagas SET status = 'running' WHERE rowid = (SELECT rowid FROM sagas LIMIT 1)",
        ),
        (
            "no_double_capture",
            "payment-processor",
            "INSERT INTO processor_records SELECT processor_key || '-again', operation, outcome, \
          reference, authorization_key, amount_minor, currency_code, decline_code, created_at \
          FROM processor_records WHERE operation = 'capture' LIMIT 1",
        ),
        (
            "captured_exactly_for_completed",
            "orchestrator",
            "UPDATE sagas SET status = 'compensated' \
          WHERE rowid = (SELECT rowid FROM sagas WHERE status = 'completed' LIMIT 1)",
        ),
        (
            "books_reconcile",
            "payment",
            "INSERT INTO ledger_entries VALUES ('zz', 'tx-alone', 'p', 'c', 'sales', 'credit', 5, \
          'USD', 'corrupt', 0)",
        ),
        (
            "stock_conserved",
            "inventory",
            "UPDATE stock SET on_hand = on_hand + 1 WHERE rowid = (SELECT rowid FROM stock LIMIT 1)",
        ),
        (
            "reserved_matches_reservations",
            "inventory",
            "UPDATE stock SET reserved = reserved + 1 \
          WHERE rowid = (SELECT rowid FROM stock WHERE on_hand > reserved LIMIT 1)",
        ),
        (
            "stock_never_negative",
            "inventory",
            "UPDATE stock SET reserved = on_hand + 1 WHERE rowid = (SELECT rowid FROM stock LIMIT 1)",
        ),
        (
            "shipments_exactly_for_completed",
            "fulfillment",
            "UPDATE shipments SET status = 'cancelled' \
          WHERE checkout_id = (SELECT checkout_id FROM shipments WHERE status != 'cancelled' LIMIT 1)",
        ),
        (
            "carts_consistent",
            "cart",
            "UPDATE carts SET state = 'checking_out', checkout_id = 'corrupt' \
          WHERE rowid = (SELECT rowid FROM carts WHERE state = 'active' LIMIT 1)",
        ),
    ];
    for (invariant, db, sql) in cases {
        let copy = dir.path().join(invariant);
        copy_dir(&data, &copy);
        corrupt(&copy, db, sql).await;
        let output = checkout()
            .args(["chaos", "--check-only", "--data-dir"])
            .arg(&copy)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            !output.status.success(),
            "{invariant}: the check passed:\n{stdout}"
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("FAIL") && l.contains(invariant)),
            "{invariant} not reported:\n{stdout}"
        );
    }
}
