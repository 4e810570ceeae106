//! The `CartService` gRPC handlers: validate, then run the use case in one transaction through
//! the idempotency layer (mutations) or a read transaction (queries).

use checkout_kit::db::{Db, Tx};
use checkout_kit::idempotency::{Idempotency, Key};
use checkout_kit::idempotent;
use checkout_kit::paging;
use checkout_kit::server::{GrpcServer, ServerLimits};
use checkout_kit::status;
use checkout_kit::validate::Violations;
use checkout_proto::cart::cart_service_server::{CartService, CartServiceServer};
use checkout_proto::cart::{
    AddItemRequest, AddItemResponse, CompleteCartRequest, CompleteCartResponse, CreateCartRequest,
    CreateCartResponse, GetCartRequest, GetCartResponse, ListProductsRequest, ListProductsResponse,
    LockCartRequest, LockCartResponse, Product, RemoveItemRequest, RemoveItemResponse,
    UnlockCartRequest, UnlockCartResponse, UpdateItemRequest, UpdateItemResponse,
};
use checkout_proto::common::Money;
use tonic::{Request, Response, Status};

use crate::carts::{self, CartLimits, Quantity};
use crate::error::CartError;
use crate::storage;

/// Idempotency scopes: the full method name of each mutating RPC.
const CREATE_CART: &str = "/checkout.cart.v1.CartService/CreateCart";
const ADD_ITEM: &str = "/checkout.cart.v1.CartService/AddItem";
const UPDATE_ITEM: &str = "/checkout.cart.v1.CartService/UpdateItem";
const REMOVE_ITEM: &str = "/checkout.cart.v1.CartService/RemoveItem";
const LOCK_CART: &str = "/checkout.cart.v1.CartService/LockCart";
const UNLOCK_CART: &str = "/checkout.cart.v1.CartService/UnlockCart";
const COMPLETE_CART: &str = "/checkout.cart.v1.CartService/CompleteCart";

const PRODUCTS_PAGE_DEFAULT: usize = 50;
const PRODUCTS_PAGE_MAX: usize = 500;

/// Handlers of `CartService` over this service's database.
#[derive(Debug, Clone)]
pub struct CartServiceApi {
    db: Db,
    idempotency: Idempotency,
    limits: CartLimits,
}

impl CartServiceApi {
    /// Handlers over an open, migrated database and its idempotency layer.
    pub fn new(db: Db, idempotency: Idempotency) -> Self {
        Self::with_limits(db, idempotency, CartLimits::default())
    }

    /// Handlers with explicit cart limits.
    pub fn with_limits(db: Db, idempotency: Idempotency, limits: CartLimits) -> Self {
        Self {
            db,
            idempotency,
            limits,
        }
    }

    /// The database the handlers use.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The idempotency layer every mutating handler goes through.
    pub fn idempotency(&self) -> &Idempotency {
        &self.idempotency
    }

    async fn read_tx(&self) -> Result<Tx, Status> {
        self.db.begin_read().await.map_err(|e| status::database(&e))
    }
}

fn optional_uuid(v: &mut Violations, field: &str, value: &str) {
    if !value.is_empty() {
        v.uuid(field, value);
    }
}

#[tonic::async_trait]
impl CartService for CartServiceApi {
    async fn list_products(
        &self,
        request: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        if !req.currency_code.is_empty() {
            v.currency("currency_code", &req.currency_code);
        }
        v.finish()?;
        let size = paging::page_size(req.page_size, PRODUCTS_PAGE_DEFAULT, PRODUCTS_PAGE_MAX)?;
        let after = paging::decode_token(&req.page_token, &req.currency_code)?.unwrap_or_default();
        let currency = (!req.currency_code.is_empty()).then_some(req.currency_code.as_str());

        let mut tx = self.read_tx().await?;
        let limit = i64::try_from(size + 1).unwrap_or(i64::MAX);
        let mut rows = storage::list_products(&mut tx, currency, &after, limit)
            .await
            .map_err(|e| status::database(&e))?;
        tx.rollback().await.map_err(|e| status::database(&e))?;

        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            rows.last()
                .map(|last| paging::encode_token(&req.currency_code, &last.sku))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let products = rows
            .into_iter()
            .map(|p| Product {
                sku: p.sku,
                name: p.name,
                description: p.description,
                unit_price: Some(Money {
                    amount_minor: p.unit_price_minor,
                    currency_code: p.currency_code,
                }),
                active: p.active,
            })
            .collect();
        Ok(Response::new(ListProductsResponse {
            products,
            next_page_token,
        }))
    }

    async fn create_cart(
        &self,
        request: Request<CreateCartRequest>,
    ) -> Result<Response<CreateCartResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .id("customer_id", &req.customer_id)
            .currency("currency_code", &req.currency_code);
        v.finish()?;
        let key = Key::new(CREATE_CART, &req)?;
        idempotent!(self.idempotency, key, |tx| {
            carts::create(tx, &req.customer_id, &req.currency_code)
                .await
                .map(|cart| CreateCartResponse { cart: Some(cart) })
                .map_err(Status::from)
        })
        .map(Response::new)
    }

    async fn get_cart(
        &self,
        request: Request<GetCartRequest>,
    ) -> Result<Response<GetCartResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("cart_id", &req.cart_id)
            .id("customer_id", &req.customer_id);
        v.finish()?;
        let mut tx = self.read_tx().await?;
        let cart = carts::get(&mut tx, &req.cart_id, &req.customer_id).await;
        tx.rollback().await.map_err(|e| status::database(&e))?;
        Ok(Response::new(GetCartResponse { cart: Some(cart?) }))
    }

    async fn add_item(
        &self,
        request: Request<AddItemRequest>,
    ) -> Result<Response<AddItemResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .uuid("cart_id", &req.cart_id)
            .id("customer_id", &req.customer_id)
            .check(req.quantity > 0, "quantity", "must be positive");
        v.sku("sku", &req.sku);
        v.finish()?;
        let key = Key::new(ADD_ITEM, &req)?;
        let quantity = Quantity::Add(req.quantity);
        idempotent!(self.idempotency, key, |tx| {
            carts::put_item(
                tx,
                &self.limits,
                &req.cart_id,
                &req.customer_id,
                &req.sku,
                quantity,
            )
            .await
            .map(|cart| AddItemResponse { cart: Some(cart) })
            .map_err(Status::from)
        })
        .map(Response::new)
    }

    async fn update_item(
        &self,
        request: Request<UpdateItemRequest>,
    ) -> Result<Response<UpdateItemResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .uuid("cart_id", &req.cart_id)
            .id("customer_id", &req.customer_id)
            .check(req.quantity >= 0, "quantity", "must not be negative");
        v.sku("sku", &req.sku);
        v.finish()?;
        let key = Key::new(UPDATE_ITEM, &req)?;
        let quantity = Quantity::Set(req.quantity);
        idempotent!(self.idempotency, key, |tx| {
            carts::put_item(
                tx,
                &self.limits,
                &req.cart_id,
                &req.customer_id,
                &req.sku,
                quantity,
            )
            .await
            .map(|cart| UpdateItemResponse { cart: Some(cart) })
            .map_err(Status::from)
        })
        .map(Response::new)
    }

    async fn remove_item(
        &self,
        request: Request<RemoveItemRequest>,
    ) -> Result<Response<RemoveItemResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .uuid("cart_id", &req.cart_id)
            .id("customer_id", &req.customer_id);
        v.sku("sku", &req.sku);
        v.finish()?;
        let key = Key::new(REMOVE_ITEM, &req)?;
        idempotent!(self.idempotency, key, |tx| {
            carts::remove_item(tx, &req.cart_id, &req.customer_id, &req.sku)
                .await
                .map(|cart| RemoveItemResponse { cart: Some(cart) })
                .map_err(Status::from)
        })
        .map(Response::new)
    }

    async fn lock_cart(
        &self,
        request: Request<LockCartRequest>,
    ) -> Result<Response<LockCartResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .uuid("cart_id", &req.cart_id)
            .uuid("checkout_id", &req.checkout_id)
            .id("customer_id", &req.customer_id);
        v.finish()?;
        let key = Key::new(LOCK_CART, &req)?;
        idempotent!(self.idempotency, key, |tx| {
            carts::lock(tx, &req.cart_id, &req.checkout_id, &req.customer_id)
                .await
                .map(|snapshot| LockCartResponse {
                    snapshot: Some(snapshot),
                })
                .map_err(Status::from)
        })
        .map(Response::new)
    }

    async fn unlock_cart(
        &self,
        request: Request<UnlockCartRequest>,
    ) -> Result<Response<UnlockCartResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .uuid("checkout_id", &req.checkout_id);
        optional_uuid(&mut v, "cart_id", &req.cart_id);
        v.finish()?;
        let key = Key::new(UNLOCK_CART, &req)?;
        let cart_id = (!req.cart_id.is_empty()).then_some(req.cart_id.as_str());
        idempotent!(self.idempotency, key, |tx| {
            carts::unlock(tx, cart_id, &req.checkout_id)
                .await
                .map(|(cart, was_locked)| UnlockCartResponse { cart, was_locked })
                .map_err(Status::from)
        })
        .map(Response::new)
    }

    async fn complete_cart(
        &self,
        request: Request<CompleteCartRequest>,
    ) -> Result<Response<CompleteCartResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.uuid("request_id", &req.request_id)
            .uuid("checkout_id", &req.checkout_id);
        optional_uuid(&mut v, "cart_id", &req.cart_id);
        v.finish()?;
        let key = Key::new(COMPLETE_CART, &req)?;
        let cart_id = (!req.cart_id.is_empty()).then_some(req.cart_id.as_str());
        idempotent!(self.idempotency, key, |tx| {
            carts::complete(tx, cart_id, &req.checkout_id)
                .await
                .map(|cart| CompleteCartResponse { cart: Some(cart) })
                .map_err(Status::from)
        })
        .map(Response::new)
    }
}

/// The cart server: `CartService` plus health and reflection.
pub fn grpc_server(db: Db, idempotency: Idempotency, limits: ServerLimits) -> GrpcServer {
    let service = checkout_kit::limit_messages!(
        CartServiceServer::new(CartServiceApi::new(db, idempotency)),
        limits
    );
    GrpcServer::new("cart", limits).add_service(service)
}

/// Upserts the catalog's products into the cart database.
pub async fn seed_catalog(db: &Db, catalog: &crate::catalog::Catalog) -> Result<(), CartError> {
    let mut tx = db.begin().await?;
    storage::upsert_products(&mut tx, catalog.entries(), checkout_kit::db::now_millis()).await?;
    tx.commit().await?;
    Ok(())
}
