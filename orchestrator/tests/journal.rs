//! The journal's group commit: concurrent sagas' writes share transactions, a fenced-off write
//! leaves its neighbours stored, and a write the database refuses fails alone. Also how a new
//! saga is stored.

use checkout_kit::db::{self, Backend, Db, PoolConfig, Tx, now_millis};
use checkout_kit::testing::{self, RoundTrips, TestDatabase, statement_log};
use checkout_orchestrator::journal::{Journal, NewEvent, SagaWrite, Saved};
use checkout_orchestrator::store::{self, AttemptRow, SagaRow, StepRow};

const OWNER: &str = "replica-under-test";

fn saga(i: usize) -> SagaRow {
    let now = now_millis();
    SagaRow {
        saga_id: format!("saga-{i:04}-{}", uuid::Uuid::new_v4().simple()),
        saga_type: "checkout".to_owned(),
        cart_id: format!("cart-{i}"),
        customer_id: format!("customer-{i}"),
        status: "running".to_owned(),
        direction: "forward".to_owned(),
        step_index: 0,
        input: "{}".to_owned(),
        outputs: "{}".to_owned(),
        failure_reason: String::new(),
        failure_message: String::new(),
        failure_step: String::new(),
        cancel_requested: false,
        pivot_started: false,
        deadline_at: now + 60_000,
        next_attempt_at: now,
        lease_owner: Some(OWNER.to_owned()),
        lease_expires_at: now + 60_000,
        version: 1,
        trace_context: String::new(),
        created_at: now,
        updated_at: now,
    }
}

/// A fresh database with the orchestrator's schema.
async fn migrated(label: &str) -> (TestDatabase, Db) {
    let database = TestDatabase::new(label);
    let db = database
        .migrated(&checkout_orchestrator::MIGRATIONS)
        .await
        .unwrap();
    (database, db)
}

async fn stored(db: &Db, n: usize) -> Vec<SagaRow> {
    let mut tx = db.begin().await.unwrap();
    let mut sagas = Vec::new();
    for i in 0..n {
        let s = saga(i);
        let steps: Vec<StepRow> = ["first", "second"]
            .iter()
            .zip(0..)
            .map(|(name, step_index)| StepRow {
                step_index,
                name: (*name).to_owned(),
                status: "pending".to_owned(),
                forward_attempts: 0,
                compensation_attempts: 0,
                forward_retry_base: 0,
                compensation_retry_base: 0,
                may_have_applied: false,
            })
            .collect();
        let new = store::NewSaga {
            saga: &s,
            steps: &steps,
            attempts: &[],
            events: &[],
            at: 0,
        };
        store::insert_saga(&mut tx, &new).await.unwrap();
        sagas.push(s);
    }
    tx.commit().await.unwrap();
    sagas
}

/// The write-ahead record of the first step, with one event carrying `message`.
fn write_ahead(s: &SagaRow, message: &str) -> SagaWrite {
    let now = now_millis();
    SagaWrite {
        saga: s.clone(),
        owner: OWNER.to_owned(),
        lease_expires_at: now + 60_000,
        require_no_cancel: false,
        release: false,
        steps: vec![StepRow {
            step_index: 0,
            name: "first".to_owned(),
            status: "running".to_owned(),
            forward_attempts: 1,
            compensation_attempts: 0,
            forward_retry_base: 0,
            compensation_retry_base: 0,
            may_have_applied: false,
        }],
        finished: Vec::new(),
        started: Some(AttemptRow {
            step_index: 0,
            direction: "forward".to_owned(),
            number: 1,
            request_id: uuid::Uuid::new_v4().to_string(),
            outcome: "in_flight".to_owned(),
            status_code: String::new(),
            message: String::new(),
            started_at: now,
            ended_at: None,
        }),
        events: vec![NewEvent {
            kind: "step_started",
            step: "first".to_owned(),
            message: message.to_owned(),
            status: "running".to_owned(),
        }],
    }
}

async fn write_all(journal: &Journal, writes: Vec<SagaWrite>) -> Vec<Result<Saved, db::DbError>> {
    let tasks: Vec<_> = writes
        .into_iter()
        .map(|w| {
            let journal = journal.clone();
            tokio::spawn(async move { journal.write(w).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

async fn read(db: &Db, saga_id: &str) -> (SagaRow, usize, usize) {
    let mut tx = db.begin_read().await.unwrap();
    let row = store::saga(&mut tx, saga_id).await.unwrap().unwrap();
    let events = store::events_after(&mut tx, saga_id, 0).await.unwrap();
    let attempts = store::attempts(&mut tx, saga_id).await.unwrap();
    tx.rollback().await.unwrap();
    (row, events.len(), attempts.len())
}

/// Makes the database refuse any timeline event whose message is `poison`.
async fn refuse_poison(tx: &mut Tx) {
    match tx {
        Tx::Sqlite(tx) => {
            sqlx::query(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON saga_events \
                 WHEN NEW.message = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
            )
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        Tx::Postgres(tx) => {
            sqlx::query(
                "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN \
                   IF NEW.message = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF; \
                   RETURN NEW; END $$ LANGUAGE plpgsql",
            )
            .execute(&mut **tx)
            .await
            .unwrap();
            sqlx::query(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON saga_events \
                 FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
            )
            .execute(&mut **tx)
            .await
            .unwrap();
        }
    }
}

// One test, phase by phase: the commit counter is process-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_shares_transactions_and_isolates_failures() {
    let (_database, db) = migrated("journal").await;
    let journal = Journal::spawn(db.clone());

    // Many sagas' writes at once: every one stored, in far fewer commits than writes.
    let sagas = stored(&db, 64).await;
    let before = db::commits_so_far();
    let results = write_all(
        &journal,
        sagas.iter().map(|s| write_ahead(s, "a")).collect(),
    )
    .await;
    let commits = db::commits_so_far() - before;
    for r in &results {
        assert_eq!(
            *r.as_ref().unwrap(),
            Saved::Written {
                cancel_requested: false
            }
        );
    }
    assert!(commits < 16, "64 writes took {commits} commits");
    for s in &sagas {
        let (row, events, attempts) = read(&db, &s.saga_id).await;
        assert_eq!((row.version, events, attempts), (2, 1, 1), "{}", s.saga_id);
    }

    // A write fenced off (its version is stale) stores nothing and harms no neighbour.
    let sagas = stored(&db, 8).await;
    let mut writes: Vec<SagaWrite> = sagas.iter().map(|s| write_ahead(s, "b")).collect();
    writes[3].saga.version = 7;
    let results = write_all(&journal, writes).await;
    for (i, (s, r)) in sagas.iter().zip(&results).enumerate() {
        let (row, events, attempts) = read(&db, &s.saga_id).await;
        if i == 3 {
            assert_eq!(*r.as_ref().unwrap(), Saved::Fenced);
            assert_eq!((row.version, events, attempts), (1, 0, 0));
        } else {
            assert!(matches!(r, Ok(Saved::Written { .. })), "{r:?}");
            assert_eq!((row.version, events, attempts), (2, 1, 1));
        }
    }

    // A write the database refuses fails alone; the batch it rode in is stored without it.
    let sagas = stored(&db, 8).await;
    let mut tx = db.begin().await.unwrap();
    refuse_poison(&mut tx).await;
    tx.commit().await.unwrap();
    let writes = sagas
        .iter()
        .enumerate()
        .map(|(i, s)| write_ahead(s, if i == 5 { "poison" } else { "c" }))
        .collect();
    let results = write_all(&journal, writes).await;
    for (i, (s, r)) in sagas.iter().zip(&results).enumerate() {
        let (row, events, attempts) = read(&db, &s.saga_id).await;
        if i == 5 {
            assert!(r.is_err(), "{r:?}");
            assert_eq!(
                (row.version, events, attempts),
                (1, 0, 0),
                "nothing half-stored"
            );
        } else {
            assert!(matches!(r, Ok(Saved::Written { .. })), "{r:?}");
            assert_eq!((row.version, events, attempts), (2, 1, 1));
        }
    }
}

#[tokio::test]
async fn on_postgres_a_journal_batch_is_one_round_trip() {
    if testing::backend() != Backend::Postgres {
        return;
    }
    let (database, db) = migrated("journal_round_trips").await;
    let sagas = stored(&db, 4).await;
    let round_trips = RoundTrips::count(&database).await;
    let proxied = Db::connect(round_trips.url(), &PoolConfig::default())
        .await
        .unwrap();
    let journal = Journal::spawn(proxied.clone());
    // The first write prepares the statement on its connection (a round trip more).
    journal.write(write_ahead(&sagas[0], "a")).await.unwrap();
    let before = round_trips.settled().await;
    for s in &sagas[1..] {
        let saved = journal.write(write_ahead(s, "b")).await.unwrap();
        assert!(matches!(saved, Saved::Written { .. }), "{saved:?}");
    }
    assert_eq!(
        round_trips.settled().await - before,
        3,
        "one statement per batch: no BEGIN, no COMMIT, one statement for all four tables"
    );
    for s in &sagas {
        let (row, events, attempts) = read(&db, &s.saga_id).await;
        assert_eq!((row.version, events, attempts), (2, 1, 1), "{}", s.saga_id);
    }
    proxied.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_committed_while_a_write_waits_for_its_saga_keeps_both_in_the_timeline() {
    let (_database, db) = migrated("journal_cancel_race").await;
    let journal = Journal::spawn(db.clone());
    let saga = stored(&db, 1).await.remove(0);
    let now = now_millis();
    // The cancel holds the saga's row (Postgres) or the writer's turn (SQLite) until it commits.
    let mut cancel = db.begin().await.unwrap();
    assert!(
        store::request_cancel(&mut cancel, &saga.saga_id, now)
            .await
            .unwrap()
    );
    store::append_event(
        &mut cancel,
        &saga.saga_id,
        "cancel_requested",
        "",
        "asked",
        "running",
        now,
    )
    .await
    .unwrap();
    let write = tokio::spawn({
        let journal = journal.clone();
        let write = write_ahead(&saga, "step");
        async move { journal.write(write).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    cancel.commit().await.unwrap();
    assert_eq!(
        write.await.unwrap().unwrap(),
        Saved::Written {
            cancel_requested: true
        }
    );
    let mut tx = db.begin_read().await.unwrap();
    let events = store::events_after(&mut tx, &saga.saga_id, 0)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let timeline: Vec<(i64, &str)> = events
        .iter()
        .map(|e| (e.sequence, e.kind.as_str()))
        .collect();
    assert_eq!(timeline, [(1, "cancel_requested"), (2, "step_started")]);
}

#[tokio::test]
async fn a_new_saga_is_one_statement_on_postgres_and_one_hand_off_on_sqlite() {
    statement_log();
    let (database, db) = migrated("new_saga").await;
    let proxy = match testing::backend() {
        Backend::Postgres => Some(RoundTrips::count(&database).await),
        Backend::Sqlite => None,
    };
    let via = match &proxy {
        Some(proxy) => Db::connect(proxy.url(), &PoolConfig::default())
            .await
            .unwrap(),
        None => db.clone(),
    };
    let first = write_ahead(&saga(0), "unused");
    let attempt = first.started.clone().unwrap();
    let accepted = NewEvent {
        kind: "accepted",
        step: String::new(),
        message: "checkout accepted".to_owned(),
        status: "running".to_owned(),
    };
    let mut round_trips = Vec::new();
    for i in 0..2 {
        let s = saga(i);
        let before = match &proxy {
            Some(proxy) => proxy.settled().await,
            None => 0,
        };
        let mut tx = via.begin().await.unwrap();
        let events = [accepted.clone(), first.events[0].clone()];
        let new = store::NewSaga {
            saga: &s,
            steps: &first.steps,
            attempts: std::slice::from_ref(&attempt),
            events: &events,
            at: 1_234,
        };
        store::insert_saga(&mut tx, &new).await.unwrap();
        tx.commit().await.unwrap();
        if let Some(proxy) = &proxy {
            round_trips.push(proxy.settled().await - before);
        }

        let mut read = db.single_read().await.unwrap();
        let view = store::saga_view(&mut read, &s.saga_id)
            .await
            .unwrap()
            .unwrap();
        read.rollback().await.unwrap();
        assert_eq!(view.saga, s);
        assert_eq!(view.steps, first.steps);
        assert_eq!(view.attempts, vec![attempt.clone()]);
        let timeline: Vec<(i64, i64, &str, &str)> = view
            .events
            .iter()
            .map(|e| (e.sequence, e.at, e.kind.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            timeline,
            vec![
                (1, 1_234, "accepted", "checkout accepted"),
                (2, 1_234, "step_started", "unused")
            ]
        );
    }
    if proxy.is_some() {
        // The first one prepares the statement on its connection: a round trip more.
        assert_eq!(
            round_trips[1], 3,
            "BEGIN, one statement for all four tables, COMMIT"
        );
    } else {
        // Other tests of this binary insert sagas too, always the same way.
        let inserts: Vec<String> = statement_log()
            .into_iter()
            .filter(|s| s.contains("INSERT INTO sagas "))
            .collect();
        assert!(inserts.len() >= 2, "{inserts:?}");
        for statement in &inserts {
            assert!(
                statement.contains("INSERT INTO saga_steps "),
                "the saga and its steps are one hand-off: {statement}"
            );
        }
        let ours = inserts.iter().filter(|s| {
            s.contains("INSERT INTO saga_attempts ") && s.contains("INSERT INTO saga_events ")
        });
        assert!(
            ours.count() >= 2,
            "with the attempt and events too: {inserts:?}"
        );
    }
    via.close().await;
    db.close().await;
}

#[tokio::test]
async fn a_saga_write_that_keeps_the_status_and_next_attempt_leaves_their_columns_unset_on_sqlite()
{
    statement_log();
    let (_database, db) = migrated("keeping_indexed").await;
    let sagas = stored(&db, 4).await;
    let now = now_millis();
    // One write keeps both indexed columns, one completes the saga, one moves its next attempt,
    // and one holds a stale version.
    let mut kept = sagas[0].clone();
    kept.step_index = 1;
    kept.outputs = r#"{"first":{}}"#.to_owned();
    let mut completed = sagas[1].clone();
    completed.status = "completed".to_owned();
    let mut later = sagas[2].clone();
    later.next_attempt_at = now + 5_000;
    let mut stale = sagas[3].clone();
    stale.version = 7;
    stale.step_index = 1;
    let save = |saga| store::SagaSave {
        saga,
        owner: OWNER,
        lease_expires_at: now + 60_000,
        require_no_cancel: false,
        release: false,
    };
    let saves = [save(&kept), save(&completed), save(&later), save(&stale)];
    let mut tx = db.begin().await.unwrap();
    let logged_before = statement_log().len();
    let mut written: Vec<String> = store::save_sagas(&mut tx, &saves)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let logged = statement_log()[logged_before..].to_vec();
    tx.commit().await.unwrap();
    written.sort();
    let mut expected = vec![
        kept.saga_id.clone(),
        completed.saga_id.clone(),
        later.saga_id.clone(),
    ];
    expected.sort();
    assert_eq!(written, expected, "the stale write is fenced off");

    let mut tx = db.single_read().await.unwrap();
    for (wrote, original) in [
        (&kept, &sagas[0]),
        (&completed, &sagas[1]),
        (&later, &sagas[2]),
    ] {
        let row = store::saga(&mut tx, &wrote.saga_id).await.unwrap().unwrap();
        assert_eq!(
            (
                row.status.as_str(),
                row.next_attempt_at,
                row.step_index,
                row.outputs.as_str(),
                row.version,
            ),
            (
                wrote.status.as_str(),
                wrote.next_attempt_at,
                wrote.step_index,
                wrote.outputs.as_str(),
                original.version + 1,
            )
        );
    }
    let row = store::saga(&mut tx, &stale.saga_id).await.unwrap().unwrap();
    assert_eq!((row.step_index, row.version), (0, sagas[3].version));
    tx.rollback().await.unwrap();

    if testing::backend() == Backend::Sqlite {
        // SQLite rewrites the entries of every index on a column a statement sets, so the
        // writes that keep both go through the statement that does not set them.
        let set_clauses: Vec<&str> = logged
            .iter()
            .filter_map(|s| s.rsplit_once("UPDATE sagas SET ").map(|(_, set)| set))
            .filter_map(|s| s.split(" FROM ").next())
            .collect();
        assert!(
            set_clauses
                .iter()
                .any(|set| !set.contains("status =") && !set.contains("next_attempt_at =")),
            "every saga update set the indexed columns: {set_clauses:?}"
        );
    }
}

#[tokio::test]
async fn a_batch_stores_steps_attempts_and_numbered_events_of_the_sagas_it_wrote_only() {
    statement_log();
    let (_database, db) = migrated("batch_tables").await;
    let sagas = stored(&db, 3).await;
    // The first saga's events need two statements on SQLite (64 rows each at most).
    let writes: Vec<SagaWrite> = sagas
        .iter()
        .zip([70, 2, 1])
        .map(|(s, events)| {
            let mut w = write_ahead(s, "first");
            w.events = numbered_events(events);
            w
        })
        .collect();
    let mut stale = writes[2].saga.clone();
    stale.version = 9;
    let batch: Vec<store::BatchWrite<'_>> = writes
        .iter()
        .zip([&writes[0].saga, &writes[1].saga, &stale])
        .map(|(w, saga)| batch_write(w, saga))
        .collect();
    let mut tx = db.begin().await.unwrap();
    let logged_before = statement_log().len();
    let written = store::save_batch(&mut tx, &batch, 4_321).await.unwrap();
    let logged = statement_log()[logged_before..].to_vec();
    tx.commit().await.unwrap();
    assert!(written.contains_key(&sagas[0].saga_id) && written.contains_key(&sagas[1].saga_id));
    assert!(
        !written.contains_key(&sagas[2].saga_id),
        "the stale write is fenced off"
    );

    let mut read = db.single_read().await.unwrap();
    for (i, w) in writes.iter().enumerate() {
        let view = store::saga_view(&mut read, &w.saga.saga_id)
            .await
            .unwrap()
            .unwrap();
        let numbered: Vec<(i64, String)> = view
            .events
            .iter()
            .map(|e| (e.sequence, e.message.clone()))
            .collect();
        if i == 2 {
            assert_eq!(view.steps[0].status, "pending", "nothing of a fenced write");
            assert!(view.attempts.is_empty() && numbered.is_empty());
            continue;
        }
        assert_eq!(view.steps[0], w.steps[0]);
        assert_eq!(view.attempts, vec![w.started.clone().unwrap()]);
        let expected: Vec<(i64, String)> = (1..)
            .zip(&w.events)
            .map(|(n, e)| (n, e.message.clone()))
            .collect();
        assert_eq!(numbered, expected, "numbered in order from 1, without gaps");
        assert!(view.events.iter().all(|e| e.at == 4_321));
    }
    read.rollback().await.unwrap();

    if testing::backend() == Backend::Sqlite {
        // The steps, attempts and events go to the writer's thread as one string (other tests
        // of this binary write batches at the same time, always the same way).
        testing::assert_one_hand_off(
            &logged,
            &[
                "UPDATE saga_steps ",
                "INSERT INTO saga_attempts ",
                "INSERT INTO saga_events ",
            ],
            // This batch's 72 events in two statements of one string.
            "INSERT INTO saga_events ",
            2,
        );
    }
    db.close().await;
}

/// `n` events of the first step, their messages numbered from 1.
fn numbered_events(n: usize) -> Vec<NewEvent> {
    (1..=n)
        .map(|n| NewEvent {
            kind: "step_started",
            step: "first".to_owned(),
            message: format!("event {n}"),
            status: "running".to_owned(),
        })
        .collect()
}

/// A journal batch's share of `w`, writing `saga` (the write's own, or a stale copy).
fn batch_write<'a>(w: &'a SagaWrite, saga: &'a SagaRow) -> store::BatchWrite<'a> {
    store::BatchWrite {
        save: store::SagaSave {
            saga,
            owner: OWNER,
            lease_expires_at: w.lease_expires_at,
            require_no_cancel: false,
            release: false,
        },
        steps: &w.steps,
        attempts: w.started.iter().collect(),
        events: &w.events,
    }
}

#[tokio::test]
async fn a_batch_none_of_whose_sagas_is_fenced_off_is_one_hand_off_with_the_saga_updates() {
    statement_log();
    let (_database, db) = migrated("batch_one_hand_off").await;
    let sagas = stored(&db, 2).await;
    let mut writes: Vec<SagaWrite> = sagas.iter().map(|s| write_ahead(s, "first")).collect();
    // One saga's write changes its status: the update that sets the indexed columns finds it.
    writes[1].saga.status = "compensating".to_owned();
    for w in &mut writes {
        w.events = numbered_events(70);
    }
    let batch: Vec<store::BatchWrite<'_>> =
        writes.iter().map(|w| batch_write(w, &w.saga)).collect();
    let mut tx = db.begin().await.unwrap();
    let logged_before = statement_log().len();
    let written = store::save_batch(&mut tx, &batch, 4_321).await.unwrap();
    let logged = statement_log()[logged_before..].to_vec();
    tx.commit().await.unwrap();
    let mut ids: Vec<&String> = written.keys().collect();
    ids.sort();
    assert_eq!(ids, [&sagas[0].saga_id, &sagas[1].saga_id]);

    let mut read = db.single_read().await.unwrap();
    for (w, original) in writes.iter().zip(&sagas) {
        let view = store::saga_view(&mut read, &w.saga.saga_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                view.saga.status.as_str(),
                view.saga.step_index,
                view.saga.version
            ),
            (
                w.saga.status.as_str(),
                w.saga.step_index,
                original.version + 1
            )
        );
        assert_eq!(view.steps[0], w.steps[0]);
        assert_eq!(view.attempts, vec![w.started.clone().unwrap()]);
        let numbered: Vec<i64> = view.events.iter().map(|e| e.sequence).collect();
        assert_eq!(numbered, (1..=70).collect::<Vec<i64>>());
    }
    read.rollback().await.unwrap();

    if testing::backend() == Backend::Sqlite {
        // The saga updates go in the same string as the steps, attempts and events. Other
        // tests of this binary write batches at the same time; only this one's holds 140
        // events, in three statements.
        let ours: Vec<&String> = logged
            .iter()
            .filter(|s| s.matches("INSERT INTO saga_events ").count() == 3)
            .collect();
        assert_eq!(ours.len(), 1, "{logged:?}");
        for statement in [
            "UPDATE sagas ",
            "UPDATE saga_steps ",
            "INSERT INTO saga_attempts ",
        ] {
            assert!(
                ours[0].contains(statement),
                "{statement} is not in: {}",
                ours[0]
            );
        }
    }
    db.close().await;
}
