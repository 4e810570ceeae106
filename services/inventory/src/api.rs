//! The `InventoryService` gRPC handlers: validate, then run the use case in one transaction
//! through the idempotency layer (mutations) or a read transaction (queries). ReserveStock
//! retries the whole attempt on an optimistic-lock conflict.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use checkout_kit::db::{Db, Tx};
use checkout_kit::idempotency::{Idempotency, Key};
use checkout_kit::idempotent;
use checkout_kit::oneof_ids;
use checkout_kit::retry::RetryPolicy;
use checkout_kit::server::{GrpcServer, ServerLimits};
use checkout_kit::status::{self, Rejection};
use checkout_kit::validate::{OneOf, Violations};
use checkout_proto::inventory::inventory_service_server::{
    InventoryService, InventoryServiceServer,
};
use checkout_proto::inventory::*;
use tonic::{Request, Response, Status};

use crate::error::InventoryError;
use crate::reservations::{self, Target};
use crate::stock;
use crate::storage::LineRow;

const SET_STOCK: &str = "/checkout.inventory.v1.InventoryService/SetStock";
const ADJUST_STOCK: &str = "/checkout.inventory.v1.InventoryService/AdjustStock";
const RESERVE_STOCK: &str = "/checkout.inventory.v1.InventoryService/ReserveStock";
const COMMIT_RESERVATION: &str = "/checkout.inventory.v1.InventoryService/CommitReservation";
const RELEASE_RESERVATION: &str = "/checkout.inventory.v1.InventoryService/ReleaseReservation";

/// Most lines in one reservation.
pub const MAX_LINES: usize = 100;
/// Most units of one line.
pub const MAX_LINE_QUANTITY: i64 = 10_000;
/// Largest stock figure a request may set or add.
pub const MAX_STOCK: i64 = 1_000_000_000;
/// Reservation TTL when the request sets none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);
/// Shortest and longest TTL a request may ask for.
pub const TTL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 60 * 60));

/// Counters of ReserveStock's optimistic locking.
#[derive(Debug, Default)]
pub struct ReserveStats {
    /// Attempts made (first tries and retries).
    pub attempts: AtomicU64,
    /// Attempts that lost a compare-and-set race.
    pub conflicts: AtomicU64,
    /// Requests that ran out of retries and answered ABORTED.
    pub exhausted: AtomicU64,
}

/// ReserveStock's exported instruments.
struct ReserveMetrics {
    attempts: opentelemetry::metrics::Counter<u64>,
    conflicts: opentelemetry::metrics::Counter<u64>,
}

fn reserve_metrics() -> &'static ReserveMetrics {
    static METRICS: std::sync::OnceLock<ReserveMetrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| {
        let m = checkout_kit::telemetry::meter();
        let metrics = ReserveMetrics {
            attempts: m
                .u64_counter("inventory.reserve.attempts")
                .with_description("reservation attempts, retries included")
                .build(),
            conflicts: m
                .u64_counter("inventory.reserve.conflicts")
                .with_description("optimistic-lock conflicts that forced a retry")
                .build(),
        };
        metrics.conflicts.add(0, &[]);
        metrics
    })
}

/// Handlers of `InventoryService`.
#[derive(Debug, Clone)]
pub struct InventoryServiceApi {
    db: Db,
    idempotency: Idempotency,
    retry: RetryPolicy,
    stats: Arc<ReserveStats>,
}

impl InventoryServiceApi {
    /// Handlers over an open, migrated database and its idempotency layer.
    pub fn new(db: Db, idempotency: Idempotency) -> Self {
        Self {
            db,
            idempotency,
            retry: RetryPolicy {
                initial_interval: Duration::from_millis(2),
                multiplier: 2.0,
                max_interval: Duration::from_millis(100),
                max_attempts: Some(32),
            },
            stats: Arc::default(),
        }
    }

    /// The same handlers with another conflict-retry policy.
    pub fn with_retry(self, retry: RetryPolicy) -> Self {
        Self { retry, ..self }
    }

    /// The database the handlers use.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The idempotency layer every mutating handler goes through.
    pub fn idempotency(&self) -> &Idempotency {
        &self.idempotency
    }

    /// ReserveStock's conflict counters.
    pub fn reserve_stats(&self) -> &ReserveStats {
        &self.stats
    }

    async fn read_tx(&self) -> Result<Tx, Status> {
        self.db.begin_read().await.map_err(|e| status::database(&e))
    }

    async fn end_read(tx: Tx) -> Result<(), Status> {
        tx.rollback().await.map_err(|e| status::database(&e))
    }
}

fn target(found: Option<OneOf>) -> Option<Target> {
    found.map(|t| match t {
        OneOf::First(id) => Target::Reservation(id),
        OneOf::Second(id) => Target::Checkout(id),
    })
}

fn ttl_millis(ttl: Option<&prost_types::Duration>) -> Result<i64, Rejection> {
    let Some(ttl) = ttl else {
        return Ok(i64::try_from(DEFAULT_TTL.as_millis()).unwrap_or(i64::MAX));
    };
    let valid = ttl.nanos >= 0 && ttl.seconds >= 0;
    let ttl = Duration::new(
        u64::try_from(ttl.seconds).unwrap_or(0),
        u32::try_from(ttl.nanos).unwrap_or(0),
    );
    if !valid || ttl < TTL_RANGE.0 || ttl > TTL_RANGE.1 {
        return Err(Rejection::invalid_field(
            "ttl",
            "must be between 1 second and 24 hours",
        ));
    }
    Ok(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

#[tonic::async_trait]
impl InventoryService for InventoryServiceApi {
    async fn list_warehouses(
        &self,
        _request: Request<ListWarehousesRequest>,
    ) -> Result<Response<ListWarehousesResponse>, Status> {
        let mut tx = self.read_tx().await?;
        let warehouses = stock::warehouses(&mut tx).await;
        Self::end_read(tx).await?;
        Ok(Response::new(ListWarehousesResponse {
            warehouses: warehouses?,
        }))
    }

    async fn get_stock(
        &self,
        request: Request<GetStockRequest>,
    ) -> Result<Response<GetStockResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.sku("sku", &req.sku);
        v.finish()?;
        let mut tx = self.read_tx().await?;
        let levels = stock::get(&mut tx, &req.sku).await;
        Self::end_read(tx).await?;
        let (levels, total_available) = levels?;
        Ok(Response::new(GetStockResponse {
            sku: req.sku,
            levels,
            total_available,
        }))
    }

    async fn set_stock(
        &self,
        request: Request<SetStockRequest>,
    ) -> Result<Response<SetStockResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .sku("sku", &req.sku)
            .id("warehouse_id", &req.warehouse_id)
            .check(
                (0..=MAX_STOCK).contains(&req.on_hand),
                "on_hand",
                "must be between 0 and 1000000000",
            );
        v.finish()?;
        let key = Key::new(SET_STOCK, &req)?;
        idempotent!(self.idempotency, key, |tx| {
            stock::set(tx, &req.sku, &req.warehouse_id, req.on_hand)
                .await
                .map(|level| SetStockResponse { level: Some(level) })
                .map_err(Status::from)
        })
        .map(Response::new)
    }

    async fn adjust_stock(
        &self,
        request: Request<AdjustStockRequest>,
    ) -> Result<Response<AdjustStockResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .sku("sku", &req.sku)
            .id("warehouse_id", &req.warehouse_id)
            .check(
                req.delta != 0 && req.delta.abs() <= MAX_STOCK,
                "delta",
                "must be non-zero and at most 1000000000 either way",
            );
        v.finish()?;
        let key = Key::new(ADJUST_STOCK, &req)?;
        idempotent!(self.idempotency, key, |tx| {
            stock::adjust(tx, &req.sku, &req.warehouse_id, req.delta)
                .await
                .map(|level| AdjustStockResponse { level: Some(level) })
                .map_err(Status::from)
        })
        .map(Response::new)
    }

    async fn reserve_stock(
        &self,
        request: Request<ReserveStockRequest>,
    ) -> Result<Response<ReserveStockResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .uuid("checkout_id", &req.checkout_id)
            .check(
                !req.lines.is_empty() && req.lines.len() <= MAX_LINES,
                "lines",
                "between 1 and 100 lines",
            );
        let mut seen = HashSet::new();
        for (i, line) in req.lines.iter().enumerate() {
            v.sku(&format!("lines[{i}].sku"), &line.sku)
                .check(
                    (1..=MAX_LINE_QUANTITY).contains(&line.quantity),
                    &format!("lines[{i}].quantity"),
                    "must be between 1 and 10000",
                )
                .check(
                    seen.insert(line.sku.as_str()),
                    &format!("lines[{i}].sku"),
                    "appears in an earlier line",
                );
        }
        let ttl = match ttl_millis(req.ttl.as_ref()) {
            Ok(ttl) => Some(ttl),
            Err(_) => {
                v.add("ttl", "must be between 1 second and 24 hours");
                None
            }
        };
        v.finish()?;
        let ttl = ttl.unwrap_or_default();
        let key = Key::new(RESERVE_STOCK, &req)?;
        let lines: Vec<LineRow> = req
            .lines
            .iter()
            .map(|l| LineRow {
                sku: l.sku.clone(),
                quantity: l.quantity,
            })
            .collect();

        let mut attempt = 1;
        loop {
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            reserve_metrics().attempts.add(1, &[]);
            let mut conflicted = false;
            let result = idempotent!(self.idempotency, key.clone(), |tx| {
                match reservations::reserve(tx, &req.checkout_id, &lines, ttl).await {
                    Ok(reservation) => Ok(ReserveStockResponse {
                        reservation: Some(reservation),
                    }),
                    Err(e) => {
                        conflicted = matches!(e, InventoryError::Conflict);
                        Err(Status::from(e))
                    }
                }
            });
            // A repeat whose handler conflicted answers what was stored instead: no retry then.
            let conflicted = conflicted
                && result
                    .as_ref()
                    .is_err_and(|s| !checkout_kit::idempotency::is_final(s.code()));
            if conflicted {
                self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                reserve_metrics().conflicts.add(1, &[]);
                if self.retry.allows_another(attempt) {
                    tokio::time::sleep(self.retry.delay(attempt)).await;
                    attempt += 1;
                    continue;
                }
                self.stats.exhausted.fetch_add(1, Ordering::Relaxed);
            }
            return result.map(Response::new);
        }
    }

    async fn commit_reservation(
        &self,
        request: Request<CommitReservationRequest>,
    ) -> Result<Response<CommitReservationResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id);
        let target = target(oneof_ids!(
            &mut v,
            req.target,
            commit_reservation_request,
            ReservationId,
            "reservation_id"
        ));
        v.finish()?;
        let target = target.ok_or_else(|| Status::invalid_argument("target"))?;
        let key = Key::new(COMMIT_RESERVATION, &req)?;
        idempotent!(self.idempotency, key, |tx| {
            reservations::commit(tx, &target)
                .await
                .map(|r| CommitReservationResponse {
                    reservation: Some(r),
                })
                .map_err(Status::from)
        })
        .map(Response::new)
    }

    async fn release_reservation(
        &self,
        request: Request<ReleaseReservationRequest>,
    ) -> Result<Response<ReleaseReservationResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id).check(
            req.reason.chars().count() <= 500,
            "reason",
            "at most 500 characters",
        );
        let target = target(oneof_ids!(
            &mut v,
            req.target,
            release_reservation_request,
            ReservationId,
            "reservation_id"
        ));
        v.finish()?;
        let target = target.ok_or_else(|| Status::invalid_argument("target"))?;
        let key = Key::new(RELEASE_RESERVATION, &req)?;
        idempotent!(self.idempotency, key, |tx| {
            reservations::release(tx, &target, &req.reason)
                .await
                .map(|r| ReleaseReservationResponse {
                    reservation: Some(r),
                })
                .map_err(Status::from)
        })
        .map(Response::new)
    }

    async fn get_reservation(
        &self,
        request: Request<GetReservationRequest>,
    ) -> Result<Response<GetReservationResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let target = target(oneof_ids!(
            &mut v,
            req.target,
            get_reservation_request,
            ReservationId,
            "reservation_id"
        ));
        v.finish()?;
        let target = target.ok_or_else(|| Status::invalid_argument("target"))?;
        let mut tx = self.read_tx().await?;
        let reservation = reservations::get(&mut tx, &target).await;
        Self::end_read(tx).await?;
        Ok(Response::new(GetReservationResponse {
            reservation: Some(reservation?),
        }))
    }
}

/// The inventory server: `InventoryService` plus health and reflection.
pub fn grpc_server(db: Db, idempotency: Idempotency, limits: ServerLimits) -> GrpcServer {
    let service = checkout_kit::limit_messages!(
        InventoryServiceServer::new(InventoryServiceApi::new(db, idempotency)),
        limits
    );
    GrpcServer::new("inventory", limits).add_service(service)
}
