//! `checkout`: every role of the checkout saga system in one binary.

use std::process::ExitCode;

use anyhow::Context;
use checkout::chaos::ChaosPlan;
use checkout::config::{
    ChaosArgs, Cli, Command, LogFormatArg, MigrateArgs, ReconcileArgs, ServeArgs, UpArgs,
    sqlite_url,
};
use checkout::launch::{self, RunningServer, System};
use checkout::role::Role;
use checkout::security::{AuthNotice, WithoutKeys};
use checkout_kit::auth::Secret;
use checkout_kit::shutdown::Shutdown;
use checkout_kit::telemetry::LogFormat;
use checkout_orchestrator::clients::ServiceEndpoints;
use checkout_payment::processor::SimulatedProcessor;
use clap::Parser;

/// Every allocation, SQLite's included, goes through mimalloc (its `override` feature).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let format = match cli.log_format {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    };
    // Dropped last, after every server drained: it flushes the exporters.
    let _telemetry = checkout_kit::telemetry::init(&cli.service_name(), format)?;
    match cli.command {
        Command::Up(args) => up(args).await,
        Command::Serve(args) => serve(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Reconcile(args) => reconcile(args).await,
        Command::Chaos(args) => chaos(args).await,
        Command::Bench(args) => {
            let remote = match &args.orchestrator {
                None => None,
                Some(orchestrator) => {
                    let key = |value: &Option<String>, flag: &str| {
                        value.clone().map(Secret::new).ok_or_else(|| {
                            anyhow::anyhow!("a running deployment needs {flag} (or its variable)")
                        })
                    };
                    Some(checkout::bench::Remote {
                        orchestrator: orchestrator.clone(),
                        cart: args.cart.clone().unwrap_or_default(),
                        inventory: args.inventory.clone().unwrap_or_default(),
                        storefront_key: key(&args.storefront_key, "--storefront-key")?,
                        internal_key: key(&args.internal_key, "--internal-key")?,
                        database_urls: args.database_urls.clone(),
                    })
                }
            };
            let plan = checkout::bench::BenchPlan {
                checkouts: args.checkouts,
                warmup: args.warmup,
                concurrency: args.concurrency,
                postgres_url: args.postgres_url.clone(),
                remote,
                preload_finished: args.preload_finished,
                progress: !args.json,
            };
            let report = checkout::bench::run(&plan).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            Ok(())
        }
        Command::Keygen => {
            print!("{}", checkout::security::keygen());
            Ok(())
        }
        Command::Demo => {
            print!("{}", checkout::demo::run().await?);
            Ok(())
        }
    }
}

async fn chaos(args: ChaosArgs) -> anyhow::Result<()> {
    let report = if args.check_only {
        let dir = args
            .data_dir
            .clone()
            .context("--check-only needs --data-dir")?;
        checkout::chaos::check_only(&dir).await?
    } else {
        let seed = args.seed.unwrap_or_else(rand::random);
        let plan = ChaosPlan {
            checkouts: args.checkouts,
            concurrency: args.concurrency,
            seed,
            kills: args.kills,
            data_dir: args.data_dir.clone(),
            postgres_url: args.postgres_url.clone(),
            quiescence_timeout: std::time::Duration::from_secs(args.quiescence_timeout_secs),
            progress: !args.json,
        };
        checkout::chaos::run(&plan).await?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    if report.passed() {
        Ok(())
    } else {
        let failed: Vec<&str> = report
            .invariants
            .iter()
            .filter(|v| !v.holds)
            .map(|v| v.name)
            .collect();
        anyhow::bail!("invariants violated: {}", failed.join(", "))
    }
}

async fn reconcile(args: ReconcileArgs) -> anyhow::Result<()> {
    let url = args
        .database_url
        .unwrap_or_else(|| sqlite_url(std::path::Path::new("data"), Role::Payment));
    let db = launch::open_database(Role::Payment, &url, &args.server.pool()).await?;
    let books = checkout_payment::processor::open_books(&db, &args.server.pool()).await?;
    let processor = SimulatedProcessor::new(books.clone());
    let report = checkout_payment::reconcile::reconcile(&db, &processor).await;
    books.close().await;
    db.close().await;
    let report = report.context("reconciliation failed")?;
    println!(
        "checked {} payments, {} ledger transactions, {} processor records",
        report.payments_checked,
        report.ledger_transactions_checked,
        report.processor_records_checked
    );
    for m in &report.mismatches {
        println!(
            "MISMATCH {} payment={} checkout={} transaction={} processor_key={}: {}",
            m.kind().as_str_name().trim_start_matches("MISMATCH_KIND_"),
            m.payment_id,
            m.checkout_id,
            m.transaction_id,
            m.processor_key,
            m.detail
        );
    }
    if report.mismatches.is_empty() {
        println!("the books agree");
        Ok(())
    } else {
        anyhow::bail!("{} mismatches found", report.mismatches.len())
    }
}

/// Says how this process authenticates: on stdout for `up` (a person reads its banner), in the
/// log for `serve` (its stdout is one line for supervisors). Development mode is announced
/// loudly on stderr either way.
fn announce(notice: &AuthNotice, banner: bool) {
    match notice {
        AuthNotice::Configured if !banner => {
            tracing::info!("auth: API keys required (configured key hashes)");
        }
        AuthNotice::Configured => println!("auth: API keys required (configured key hashes)"),
        AuthNotice::DevelopmentKeys(path) => println!(
            "auth: API keys required; development keys in {} (`source` it; the servers keep \
             only hashes; configure --storefront-key-sha256/--internal-key-sha256 for your own)",
            path.display()
        ),
        AuthNotice::Disabled => {
            let warning = "\
!!! ================================================================== !!!
!!!  AUTHENTICATION IS DISABLED (--auth-disabled)                       !!!
!!!  Any client can call every RPC: payments, stock, fault injection.   !!!
!!!  Development only. Never expose these ports.                        !!!
!!! ================================================================== !!!";
            if banner {
                println!("{warning}");
            }
            eprintln!("{warning}");
            tracing::warn!("authentication is disabled: every RPC accepts unauthenticated calls");
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let mut settings = args.server.settings()?;
    let keys_file = args.databases.data_dir.join("api-keys.env");
    let (security, notice) = args
        .security
        .resolve(WithoutKeys::DevelopmentKeysIn(keys_file))?;
    if security.server_tls.is_some() && security.client_tls.is_none() {
        anyhow::bail!(
            "--tls-cert needs --tls-ca: the orchestrator verifies the services' certificates"
        );
    }
    settings.security = security;
    let system = System::start(
        |role| args.databases.url(role),
        |role| args.listen.addr(role).to_owned(),
        &settings,
        Shutdown::on_signals(),
    )
    .await
    .context("cannot start the system")?;

    println!("checkout is up: five servers in one process");
    announce(&notice, true);
    for role in Role::ALL {
        println!(
            "  {:<12} {:<45} {}  db {}",
            role.name(),
            role.grpc_service(),
            system.endpoint(role),
            args.databases.url(role)
        );
    }
    let plaintext = if settings.security.server_tls.is_some() {
        ""
    } else {
        "-plaintext "
    };
    println!(
        "try: grpcurl {plaintext}{} list   (Ctrl-C stops)",
        system.addr(Role::Orchestrator)
    );
    system.wait().await.context("a server failed")?;
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let role = args.role;
    let url = args
        .database_url
        .unwrap_or_else(|| sqlite_url(std::path::Path::new("data"), role));
    let listen = args
        .listen
        .unwrap_or_else(|| role.default_listen().to_owned());
    let endpoints = ServiceEndpoints {
        cart: args.endpoints.cart_endpoint,
        inventory: args.endpoints.inventory_endpoint,
        payment: args.endpoints.payment_endpoint,
        fulfillment: args.endpoints.fulfillment_endpoint,
    };

    let mut settings = args.server.settings()?;
    let (security, notice) = args.security.resolve(WithoutKeys::Refuse)?;
    settings.security = security;
    let db = launch::open_database(role, &url, &settings.pool).await?;
    launch::prepare(role, &db, &settings).await?;
    let listener = launch::bind(role, &listen).await?;
    let server = launch::build_server(role, db.clone(), &settings, &endpoints).await?;
    let running = RunningServer::spawn(
        role,
        db,
        listener,
        server,
        &settings,
        Shutdown::on_signals(),
    )?;
    println!(
        "{} serving {} on {}",
        role.name(),
        role.grpc_service(),
        running.addr
    );
    announce(&notice, false);
    running.wait().await?;
    Ok(())
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let roles = if args.roles.is_empty() {
        Role::ALL.to_vec()
    } else {
        args.roles.clone()
    };
    let targets: Vec<(Role, String)> = match (&args.database_url, roles.as_slice()) {
        (Some(url), [role]) => vec![(*role, url.clone())],
        (Some(_), _) => {
            return Err(launch::LaunchError::Usage(
                "--database-url needs exactly one role; use the per-role --<role>-database-url \
                 flags for several"
                    .to_owned(),
            )
            .into());
        }
        (None, _) => roles
            .iter()
            .map(|role| (*role, args.databases.url(*role)))
            .collect(),
    };
    for (role, db) in launch::migrate(&targets, &args.server.pool()).await? {
        println!("{:<12} migrated  {db}", role.name());
    }
    Ok(())
}
