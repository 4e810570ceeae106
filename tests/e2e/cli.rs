//! The binary itself: clear failures with a non-zero exit, `migrate`, and `up` end to end.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use checkout_kit::testing::{self, TestDatabase};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn checkout() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_checkout"));
    // The tests choose every setting; nothing leaks in from the caller's environment.
    for (key, _) in std::env::vars() {
        if key.starts_with("CHECKOUT_") {
            command.env_remove(key);
        }
    }
    command.env("RUST_LOG", "warn");
    crate::helpers::with_test_keys(&mut command);
    command
}

fn run(command: &mut Command) -> (bool, String, String) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_unsupported_database_url_fails_clearly() {
    let (ok, _, stderr) = run(checkout().args([
        "serve",
        "cart",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        "mysql://root@127.0.0.1/cart",
    ]));
    assert!(!ok);
    assert!(stderr.contains("unsupported database URL"), "{stderr}");
    assert!(
        stderr.contains("expected `sqlite:` or `postgres:`"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_database_fails_clearly_without_its_password() {
    let (ok, _, stderr) = run(checkout().args([
        "serve",
        "payment",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        "postgres://postgres:hunter2@127.0.0.1:1/payment",
    ]));
    assert!(!ok);
    assert!(
        stderr.contains("payment database: cannot open database"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn a_port_in_use_fails_clearly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cart.db", dir.path().display());
    let (ok, _, stderr) =
        run(checkout().args(["serve", "cart", "--listen", &addr, "--database-url", &url]));
    assert!(!ok);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(stderr.to_lowercase().contains("in use"), "{stderr}");
}

#[test]
fn a_malformed_endpoint_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/o.db", dir.path().display());
    let (ok, _, stderr) = run(checkout().args([
        "serve",
        "orchestrator",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &url,
        "--payment-endpoint",
        "payment-host-without-scheme",
    ]));
    assert!(!ok);
    assert!(
        stderr.contains("payment endpoint: invalid endpoint `payment-host-without-scheme`"),
        "{stderr}"
    );
}

#[test]
fn migrate_applies_every_database_and_is_repeatable() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let databases: Vec<TestDatabase> = [
        "cart",
        "inventory",
        "payment",
        "fulfillment",
        "orchestrator",
    ]
    .iter()
    .map(|name| TestDatabase::new(name))
    .collect();
    let mut command = checkout();
    command.arg("migrate").arg("--data-dir").arg(&data_dir);
    for (name, db) in [
        "cart",
        "inventory",
        "payment",
        "fulfillment",
        "orchestrator",
    ]
    .iter()
    .zip(&databases)
    {
        command.arg(format!("--{name}-database-url")).arg(db.url());
    }
    for _ in 0..2 {
        let (ok, stdout, stderr) = run(&mut command);
        assert!(ok, "{stderr}");
        for name in [
            "cart",
            "inventory",
            "payment",
            "fulfillment",
            "orchestrator",
        ] {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with(name) && l.contains("migrated")),
                "{stdout}"
            );
        }
    }

    // One role with one URL; several roles with one URL is a usage error.
    let single = TestDatabase::new("single");
    let (ok, stdout, stderr) =
        run(checkout().args(["migrate", "cart", "--database-url", single.url()]));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("cart"), "{stdout}");
    let (ok, _, stderr) =
        run(checkout().args(["migrate", "cart", "payment", "--database-url", single.url()]));
    assert!(!ok);
    assert!(stderr.contains("needs exactly one role"), "{stderr}");
}

/// Starts `up` on port 0 everywhere with its data under `dir`, and returns it with the lines of
/// its banner (up to the `try:` line).
async fn spawn_up(
    mut command: Command,
    dir: &std::path::Path,
    extra: &[&str],
) -> (std::process::Child, Vec<String>) {
    let mut child = command
        .arg("up")
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .args(["--orchestrator-listen", "127.0.0.1:0"])
        .args(["--cart-listen", "127.0.0.1:0"])
        .args(["--inventory-listen", "127.0.0.1:0"])
        .args(["--payment-listen", "127.0.0.1:0"])
        .args(["--fulfillment-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let banner = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|line| !line.starts_with("try:"))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    (child, banner)
}

/// `up` on the embedded default: all five servers answer, and SIGTERM ends it cleanly.
#[tokio::test]
async fn up_serves_all_five_and_stops_on_sigterm() {
    if testing::backend() != checkout_kit::db::Backend::Sqlite {
        // `up` is the embedded SQLite default; the Postgres leg covers `serve` and the library.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, banner) = spawn_up(checkout(), dir.path(), &[]).await;
    let endpoints: Vec<String> = banner
        .iter()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|w| w.starts_with("http://"))
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(endpoints.len(), 5, "{endpoints:?}");
    for endpoint in &endpoints {
        let mut client = HealthClient::new(crate::helpers::channel(endpoint).await);
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
    }
    for name in [
        "cart",
        "inventory",
        "payment",
        "fulfillment",
        "orchestrator",
    ] {
        assert!(dir.path().join(format!("{name}.db")).exists(), "{name}.db");
    }

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("up exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// The binary replaces malloc process-wide, so SQLite's page allocations go through mimalloc
/// too (docs/PERFORMANCE.md). glibc's allocator grows the `[heap]` mapping on its first call;
/// with every server serving (databases migrated and seeded), there must be none.
#[tokio::test]
async fn up_allocates_nothing_through_glibc_malloc_not_even_for_sqlite() {
    if testing::backend() != checkout_kit::db::Backend::Sqlite {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, banner) = spawn_up(checkout(), dir.path(), &[]).await;
    assert!(banner.iter().any(|l| l.contains("http://")), "{banner:?}");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !maps.lines().any(|l| l.ends_with("[heap]")),
        "glibc's heap is in use:\n{maps}"
    );
}

#[test]
fn a_bad_catalog_file_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.json");
    std::fs::write(
        &catalog,
        r#"[{"sku": "A", "name": "x", "unit_price_minor": -5, "currency_code": "USD"}]"#,
    )
    .unwrap();
    let url = format!("sqlite://{}/cart.db", dir.path().display());
    let (ok, _, stderr) = run(checkout()
        .args([
            "serve",
            "cart",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &url,
        ])
        .arg("--catalog-file")
        .arg(&catalog));
    assert!(!ok);
    assert!(stderr.contains("negative price"), "{stderr}");
}

#[tokio::test]
async fn reconcile_passes_clean_books_and_fails_on_a_mismatch() {
    let database = TestDatabase::new("payment");
    let (ok, stdout, stderr) =
        run(checkout().args(["reconcile", "--database-url", database.url()]));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("the books agree"), "{stdout}");

    let payment =
        checkout_kit::db::Db::connect(database.url(), &checkout_kit::db::PoolConfig::default())
            .await
            .unwrap();
    // The charge goes into the processor's books, wherever they are kept.
    let db =
        checkout_payment::processor::open_books(&payment, &checkout_kit::db::PoolConfig::default())
            .await
            .unwrap();
    let mut tx = db.begin().await.unwrap();
    checkout_kit::on_backend!(&mut tx, conn => {
        sqlx::query(
            "INSERT INTO processor_records (processor_key, operation, outcome, reference, \
               authorization_key, amount_minor, currency_code, decline_code, created_at) \
             VALUES ('ghost', 'authorize', 'approved', 'ch_ghost', 'ghost', 999, 'USD', '', 0)",
        )
        .execute(&mut *conn)
        .await
        .unwrap();
    });
    tx.commit().await.unwrap();
    db.close().await;
    payment.close().await;

    let (ok, stdout, stderr) =
        run(checkout().args(["reconcile", "--database-url", database.url()]));
    assert!(!ok);
    assert!(
        stdout.contains("MISMATCH CHARGE_WITHOUT_PAYMENT"),
        "{stdout}"
    );
    assert!(stderr.contains("1 mismatches found"), "{stderr}");
}

#[test]
fn the_demo_shows_a_completed_a_declined_and_an_out_of_stock_checkout() {
    let (ok, stdout, stderr) = run(checkout().arg("demo"));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("status COMPLETED"), "{stdout}");
    assert!(
        stdout.contains("why: PAYMENT_DECLINED at authorize_payment"),
        "{stdout}"
    );
    assert!(
        stdout.contains("why: OUT_OF_STOCK at reserve_inventory"),
        "{stdout}"
    );
    assert!(
        stdout.contains("step_compensated           unlock_cart"),
        "{stdout}"
    );
}

#[test]
fn fault_rules_need_fault_injection_allowed() {
    let (ok, _, stderr) = run(checkout().args([
        "serve",
        "cart",
        "--listen",
        "127.0.0.1:0",
        "--fault-rules",
        r#"[{"rpc_pattern": "*", "probability": 1, "kind": "delay", "delay_ms": 5}]"#,
    ]));
    assert!(!ok);
    assert!(
        stderr.contains("--fault-rules needs --allow-fault-injection"),
        "{stderr}"
    );
}

/// A crash rule aborts the real process after the effect committed.
#[tokio::test]
async fn a_crash_rule_aborts_the_process_after_handling() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cart.db", dir.path().display());
    let mut child = checkout()
        .args(["serve", "cart", "--listen", "127.0.0.1:0", "--database-url", &url])
        .arg("--allow-fault-injection")
        .args([
            "--fault-rules",
            r#"[{"rpc_pattern": "/checkout.cart.v1.CartService/CreateCart", "probability": 1, "kind": "crash_after"}]"#,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let endpoint = format!("http://{}", line.split_whitespace().last().unwrap());
    let mut cart = checkout_proto::cart::cart_service_client::CartServiceClient::new(
        crate::helpers::channel(&endpoint).await,
    );
    let lost = cart
        .create_cart(checkout_proto::cart::CreateCartRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            customer_id: "hank".to_owned(),
            currency_code: "USD".to_owned(),
        })
        .await;
    assert!(lost.is_err(), "the answer died with the process");
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the process aborted");
    assert!(!status.success());
}

#[test]
fn bench_reports_throughput_latency_commits_and_outcomes() {
    let (ok, stdout, stderr) = run(checkout().args([
        "bench",
        "--checkouts",
        "20",
        "--warmup",
        "2",
        "--concurrency",
        "4",
        "--preload-finished",
        "500",
        "--json",
    ]));
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcomes"]["COMPLETED"], 20, "{report}");
    assert_eq!(report["preloaded_sagas"], 500, "{report}");
    let plans = report["query_plans"].as_object().unwrap();
    assert_eq!(
        plans.len(),
        5,
        "the sweeper's and four listing queries: {report}"
    );
    assert!(
        plans["sweeper: due sagas"]
            .to_string()
            .contains("sagas_due"),
        "{report}"
    );
    assert!(report["checkouts_per_second"].as_f64().unwrap() > 0.0);
    assert!(
        report["latency"]["p99_ms"].as_f64().unwrap()
            >= report["latency"]["p50_ms"].as_f64().unwrap()
    );
    // Counted, not bounded below: concurrent steps' writes share SQLite COMMITs.
    assert!(
        report["commits_per_checkout"].as_f64().unwrap() > 0.0,
        "durable commits are counted: {report}"
    );
    assert!(report["step_mean_ms"]["capture_payment"].as_f64().is_some());
}

/// On Postgres, `bench` counts durable commits from the servers' `xact_commit`, less the
/// single-statement reads, which Postgres counts as transactions though they write nothing.
#[test]
fn bench_on_postgres_leaves_single_statement_reads_out_of_the_durable_commits() {
    if testing::backend() != checkout_kit::db::Backend::Postgres {
        return;
    }
    let server = testing::postgres_server_url();
    let (ok, stdout, stderr) = run(checkout().args([
        "bench",
        "--postgres-url",
        &server,
        "--checkouts",
        "10",
        "--warmup",
        "2",
        "--concurrency",
        "2",
        "--json",
    ]));
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcomes"]["COMPLETED"], 10, "{report}");
    let durable = report["commits_per_checkout"].as_f64().unwrap();
    let counted = report["postgres_xact_commits_per_checkout"]
        .as_f64()
        .unwrap();
    // Every checkout's answer is read in one statement of its own.
    assert!(durable > 0.0 && counted - durable >= 1.0, "{report}");
    assert!(
        report["commits_source"]
            .as_str()
            .unwrap()
            .contains("less the single-statement reads"),
        "{report}"
    );
}

/// `bench` drives a running deployment given by its addresses and keys: stock comes through
/// SetStock, per-step latency from the checkouts' own attempts.
#[tokio::test]
async fn bench_drives_a_running_deployment_by_address() {
    if testing::backend() != checkout_kit::db::Backend::Sqlite {
        // `up` is the embedded SQLite default.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, banner) = spawn_up(checkout(), dir.path(), &[]).await;
    let endpoint = |role: &str| {
        banner
            .iter()
            .find(|line| line.split_whitespace().next() == Some(role))
            .and_then(|line| line.split_whitespace().find(|w| w.starts_with("http://")))
            .unwrap_or_else(|| panic!("{role} in {banner:?}"))
            .to_owned()
    };
    let keys = crate::helpers::test_credentials();
    let bench = tokio::task::spawn_blocking({
        let (orchestrator, cart, inventory) = (
            endpoint("orchestrator"),
            endpoint("cart"),
            endpoint("inventory"),
        );
        move || {
            run(checkout().args([
                "bench",
                "--orchestrator",
                &orchestrator,
                "--cart",
                &cart,
                "--inventory",
                &inventory,
                "--storefront-key",
                keys.storefront.expose(),
                "--internal-key",
                keys.internal.expose(),
                "--checkouts",
                "12",
                "--warmup",
                "2",
                "--concurrency",
                "3",
                "--json",
            ]))
        }
    })
    .await
    .unwrap();
    let (ok, stdout, stderr) = bench;
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcomes"]["COMPLETED"], 12, "{report}");
    assert_eq!(report["backend"], "remote", "{report}");
    for step in ["lock_cart", "authorize_payment", "complete_cart"] {
        assert!(
            report["step_mean_ms"][step].as_f64().is_some(),
            "{step}: {report}"
        );
    }
    assert!(
        report["commits_source"]
            .as_str()
            .unwrap()
            .contains("not measured"),
        "{report}"
    );

    // A wrong key is refused, not half-run.
    let (ok, _, stderr) = run(checkout().args([
        "bench",
        "--orchestrator",
        &endpoint("orchestrator"),
        "--cart",
        &endpoint("cart"),
        "--inventory",
        &endpoint("inventory"),
        "--storefront-key",
        "wrong",
        "--internal-key",
        "wrong",
        "--checkouts",
        "1",
    ]));
    let _ = child.kill();
    let _ = child.wait();
    assert!(!ok);
    assert!(stderr.contains("the API key is not valid"), "{stderr}");
}

/// The binary with no API keys configured at all.
fn keyless() -> Command {
    let mut command = checkout();
    for key in [
        "CHECKOUT_STOREFRONT_KEY_SHA256",
        "CHECKOUT_INTERNAL_KEY_SHA256",
        "CHECKOUT_INTERNAL_KEY_FILE",
    ] {
        command.env_remove(key);
    }
    command
}

/// Servers never start open by accident: no keys and no explicit development mode is an error,
/// and development mode is announced loudly.
#[tokio::test]
async fn auth_is_off_only_when_asked_for_and_then_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cart.db", dir.path().display());
    let mut bare = keyless();
    let (ok, _, stderr) = run(bare.args([
        "serve",
        "cart",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &url,
    ]));
    assert!(!ok);
    assert!(stderr.contains("no API keys configured"), "{stderr}");

    if testing::backend() != checkout_kit::db::Backend::Sqlite {
        return;
    }
    let (mut child, banner) = spawn_up(keyless(), dir.path(), &["--auth-disabled"]).await;
    let banner = banner.join("\n");
    let _ = child.kill();
    let _ = child.wait();
    assert!(banner.contains("AUTHENTICATION IS DISABLED"), "{banner}");
}

#[test]
fn keygen_prints_a_key_and_the_hash_servers_are_configured_with() {
    let (ok, stdout, _) = run(checkout().arg("keygen"));
    assert!(ok);
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|rest| rest.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
    };
    let key = checkout_kit::auth::Secret::new(field("key"));
    assert_eq!(key.hash().to_hex(), field("sha256"));
    let (_, again, _) = run(checkout().arg("keygen"));
    assert_ne!(stdout, again, "every key is fresh");
}
