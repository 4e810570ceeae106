//! Every cart rule, through the handlers, on the backend the test run picks.

use std::collections::HashSet;

use checkout_cart::api::{CartServiceApi, seed_catalog};
use checkout_cart::carts::CartLimits;
use checkout_cart::catalog::{Catalog, CatalogEntry};
use checkout_kit::db::{Backend, Db};
use checkout_kit::idempotency::{Idempotency, IdempotencyConfig};
use checkout_kit::status::{fields_of, reason_of};
use checkout_kit::testing::{self, TestDatabase, statement_log};
use checkout_proto::cart::cart_service_server::CartService;
use checkout_proto::cart::*;
use tonic::{Code, Request, Status};

struct Harness {
    api: CartServiceApi,
    db: Db,
    _database: TestDatabase,
}

async fn harness_with(limits: CartLimits) -> Harness {
    let database = TestDatabase::new("cart");
    let db = database.migrated(&checkout_cart::MIGRATIONS).await.unwrap();
    seed_catalog(&db, &Catalog::fixture()).await.unwrap();
    let idempotency = Idempotency::new(db.clone(), IdempotencyConfig::default());
    Harness {
        api: CartServiceApi::with_limits(db.clone(), idempotency, limits),
        db,
        _database: database,
    }
}

async fn harness() -> Harness {
    harness_with(CartLimits::default()).await
}

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn assert_refused(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(status).as_deref(), Some(reason), "{status:?}");
}

fn assert_invalid(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(fields_of(status).iter().any(|f| f == field), "{status:?}");
}

impl Harness {
    async fn create(&self, customer: &str, currency: &str) -> Cart {
        self.api
            .create_cart(Request::new(CreateCartRequest {
                request_id: rid(),
                customer_id: customer.to_owned(),
                currency_code: currency.to_owned(),
            }))
            .await
            .unwrap()
            .into_inner()
            .cart
            .unwrap()
    }

    async fn add(&self, cart: &Cart, sku: &str, quantity: i64) -> Result<Cart, Status> {
        self.api
            .add_item(Request::new(AddItemRequest {
                request_id: rid(),
                cart_id: cart.cart_id.clone(),
                customer_id: cart.customer_id.clone(),
                sku: sku.to_owned(),
                quantity,
            }))
            .await
            .map(|r| r.into_inner().cart.unwrap())
    }

    async fn update(&self, cart: &Cart, sku: &str, quantity: i64) -> Result<Cart, Status> {
        self.api
            .update_item(Request::new(UpdateItemRequest {
                request_id: rid(),
                cart_id: cart.cart_id.clone(),
                customer_id: cart.customer_id.clone(),
                sku: sku.to_owned(),
                quantity,
            }))
            .await
            .map(|r| r.into_inner().cart.unwrap())
    }

    async fn get(&self, cart: &Cart) -> Cart {
        self.api
            .get_cart(Request::new(GetCartRequest {
                cart_id: cart.cart_id.clone(),
                customer_id: cart.customer_id.clone(),
            }))
            .await
            .unwrap()
            .into_inner()
            .cart
            .unwrap()
    }

    async fn lock_as(
        &self,
        request_id: &str,
        cart: &Cart,
        checkout_id: &str,
        customer: &str,
    ) -> Result<CartSnapshot, Status> {
        self.api
            .lock_cart(Request::new(LockCartRequest {
                request_id: request_id.to_owned(),
                cart_id: cart.cart_id.clone(),
                checkout_id: checkout_id.to_owned(),
                customer_id: customer.to_owned(),
            }))
            .await
            .map(|r| r.into_inner().snapshot.unwrap())
    }

    async fn lock(&self, cart: &Cart, checkout_id: &str) -> Result<CartSnapshot, Status> {
        self.lock_as(&rid(), cart, checkout_id, &cart.customer_id)
            .await
    }

    async fn unlock(&self, checkout_id: &str) -> Result<UnlockCartResponse, Status> {
        self.api
            .unlock_cart(Request::new(UnlockCartRequest {
                request_id: rid(),
                cart_id: String::new(),
                checkout_id: checkout_id.to_owned(),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn complete(&self, checkout_id: &str) -> Result<Cart, Status> {
        self.api
            .complete_cart(Request::new(CompleteCartRequest {
                request_id: rid(),
                cart_id: String::new(),
                checkout_id: checkout_id.to_owned(),
            }))
            .await
            .map(|r| r.into_inner().cart.unwrap())
    }
}

fn line_quantities(lines: &[CartLine]) -> Vec<(String, i64)> {
    lines.iter().map(|l| (l.sku.clone(), l.quantity)).collect()
}

#[tokio::test]
async fn products_page_through_the_active_catalog() {
    let h = harness().await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = h
            .api
            .list_products(Request::new(ListProductsRequest {
                page_size: 7,
                page_token: token.clone(),
                currency_code: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(page.products.len() <= 7);
        seen.extend(page.products.into_iter().map(|p| p.sku));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let active: Vec<String> = {
        let mut skus: Vec<String> = Catalog::fixture()
            .entries()
            .iter()
            .filter(|e| e.active)
            .map(|e| e.sku.clone())
            .collect();
        skus.sort();
        skus
    };
    assert_eq!(seen, active, "every active product once, in sku order");

    let eur = h
        .api
        .list_products(Request::new(ListProductsRequest {
            page_size: 500,
            page_token: String::new(),
            currency_code: "EUR".to_owned(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!eur.products.is_empty());
    assert!(
        eur.products
            .iter()
            .all(|p| p.unit_price.as_ref().unwrap().currency_code == "EUR")
    );

    // A token is bound to its listing's filter.
    let first = h
        .api
        .list_products(Request::new(ListProductsRequest {
            page_size: 2,
            page_token: String::new(),
            currency_code: "USD".to_owned(),
        }))
        .await
        .unwrap()
        .into_inner();
    let wrong = h
        .api
        .list_products(Request::new(ListProductsRequest {
            page_size: 2,
            page_token: first.next_page_token,
            currency_code: "EUR".to_owned(),
        }))
        .await
        .unwrap_err();
    assert_invalid(&wrong, "page_token");
    let negative = h
        .api
        .list_products(Request::new(ListProductsRequest {
            page_size: -1,
            ..ListProductsRequest::default()
        }))
        .await
        .unwrap_err();
    assert_invalid(&negative, "page_size");
}

#[tokio::test]
async fn carts_are_created_in_a_sold_currency_by_a_named_customer() {
    let h = harness().await;
    let cart = h.create("alice", "USD").await;
    assert_eq!(cart.state(), CartState::Active);
    assert_eq!(cart.version, 1);
    assert_eq!(cart.subtotal.unwrap().amount_minor, 0);

    for (request_id, customer, currency, field) in [
        (rid(), "alice", "usd", "currency_code"),
        (rid(), "alice", "CHF", "currency_code"),
        (rid(), "", "USD", "customer_id"),
        ("not-a-uuid".to_owned(), "alice", "USD", "request_id"),
    ] {
        let refused = h
            .api
            .create_cart(Request::new(CreateCartRequest {
                request_id,
                customer_id: customer.to_owned(),
                currency_code: currency.to_owned(),
            }))
            .await
            .unwrap_err();
        assert_invalid(&refused, field);
    }
}

#[tokio::test]
async fn items_are_priced_by_the_catalog_and_every_change_bumps_the_version() {
    let h = harness().await;
    let cart = h.create("alice", "USD").await;
    let after_add = h.add(&cart, "TSHIRT-BLK-M", 2).await.unwrap();
    assert_eq!(after_add.version, 2);
    let again = h.add(&cart, "TSHIRT-BLK-M", 1).await.unwrap();
    assert_eq!(
        line_quantities(&again.lines),
        vec![("TSHIRT-BLK-M".to_owned(), 3)]
    );
    let line = &again.lines[0];
    assert_eq!(line.unit_price.as_ref().unwrap().amount_minor, 1999);
    assert_eq!(line.line_total.as_ref().unwrap().amount_minor, 3 * 1999);
    assert_eq!(line.name, "Black T-shirt, M");
    assert_eq!(again.version, 3);

    let with_mug = h.add(&cart, "MUG-CERAMIC", 1).await.unwrap();
    assert_eq!(with_mug.subtotal.unwrap().amount_minor, 3 * 1999 + 1200);
    let updated = h.update(&cart, "TSHIRT-BLK-M", 5).await.unwrap();
    assert_eq!(updated.lines[0].quantity, 5, "update sets, it does not add");
    let removed = h.update(&cart, "TSHIRT-BLK-M", 0).await.unwrap();
    assert_eq!(
        line_quantities(&removed.lines),
        vec![("MUG-CERAMIC".to_owned(), 1)]
    );
    let gone = h
        .api
        .remove_item(Request::new(RemoveItemRequest {
            request_id: rid(),
            cart_id: cart.cart_id.clone(),
            customer_id: "alice".to_owned(),
            sku: "MUG-CERAMIC".to_owned(),
        }))
        .await
        .unwrap()
        .into_inner()
        .cart
        .unwrap();
    assert!(gone.lines.is_empty());
    assert_eq!(gone.version, 7);
    assert_eq!(h.get(&cart).await, gone);

    let missing = h.update(&cart, "MUG-CERAMIC", 0).await.unwrap_err();
    assert_refused(&missing, Code::NotFound, "LINE_NOT_FOUND");
}

#[tokio::test]
async fn bad_items_are_refused_by_field_and_change_nothing() {
    let h = harness_with(CartLimits {
        max_lines: 2,
        max_quantity: 10,
    })
    .await;
    let cart = h.create("alice", "USD").await;
    h.add(&cart, "TSHIRT-BLK-M", 1).await.unwrap();
    let before = h.get(&cart).await;

    let cases = [
        ("NO-SUCH-SKU", 1, "sku"),
        ("DISCONTINUED-SCARF", 1, "sku"),
        ("TSHIRT-BLK-M-EU", 1, "sku"),
        ("bad sku", 1, "sku"),
        ("MUG-CERAMIC", 0, "quantity"),
        ("MUG-CERAMIC", -3, "quantity"),
        ("TSHIRT-BLK-M", 10, "quantity"),
    ];
    for (sku, quantity, field) in cases {
        let refused = h.add(&cart, sku, quantity).await.unwrap_err();
        assert_invalid(&refused, field);
    }
    h.add(&cart, "MUG-CERAMIC", 1).await.unwrap();
    let too_many = h.add(&cart, "CAP-NVY", 1).await.unwrap_err();
    assert_invalid(&too_many, "sku");
    assert_eq!(h.get(&cart).await.lines.len(), 2);
    assert_eq!(before.lines.len(), 1);

    let stranger = Cart {
        customer_id: "mallory".to_owned(),
        ..cart.clone()
    };
    assert_refused(
        &h.add(&stranger, "MUG-CERAMIC", 1).await.unwrap_err(),
        Code::NotFound,
        "CART_NOT_FOUND",
    );
    let unknown = Cart {
        cart_id: uuid::Uuid::new_v4().to_string(),
        ..cart.clone()
    };
    assert_refused(
        &h.add(&unknown, "MUG-CERAMIC", 1).await.unwrap_err(),
        Code::NotFound,
        "CART_NOT_FOUND",
    );
    let not_found = h
        .api
        .get_cart(Request::new(GetCartRequest {
            cart_id: cart.cart_id.clone(),
            customer_id: "mallory".to_owned(),
        }))
        .await
        .unwrap_err();
    assert_eq!(not_found.code(), Code::NotFound);
}

#[tokio::test]
async fn a_lock_snapshots_the_cart_and_stops_edits_until_unlocked() {
    statement_log();
    let h = harness().await;
    let cart = h.create("alice", "USD").await;
    h.add(&cart, "HOODIE-GRY-M", 2).await.unwrap();
    h.add(&cart, "SOCKS-3PK", 1).await.unwrap();
    let checkout = rid();

    let before = statement_log().len();
    let snapshot = h.lock(&cart, &checkout).await.unwrap();
    if h.db.backend() == Backend::Sqlite {
        // The cart's new state is the lock's last write: it goes with the key.
        let logged = statement_log()[before..].to_vec();
        assert!(
            logged.iter().any(|s| s.contains("UPDATE carts SET state ")
                && s.contains("INSERT INTO idempotency_keys ")),
            "the state and the key in one hand-off: {logged:?}"
        );
        // The claim, the bump and the lines it decides on went together.
        testing::assert_one_hand_off(
            &logged,
            &[
                "DO UPDATE SET state = cart_checkouts.state",
                "UPDATE carts SET version = version + 1",
                "FROM cart_lines",
            ],
            "FROM cart_lines",
            1,
        );
    }
    assert_eq!(snapshot.cart_id, cart.cart_id);
    assert_eq!(snapshot.checkout_id, checkout);
    assert_eq!(snapshot.currency_code, "USD");
    assert_eq!(
        snapshot.subtotal.as_ref().unwrap().amount_minor,
        2 * 4999 + 1500
    );
    assert_eq!(snapshot.lines.len(), 2);
    let locked = h.get(&cart).await;
    assert_eq!(locked.state(), CartState::CheckingOut);
    assert_eq!(locked.checkout_id, checkout);
    assert_eq!(snapshot.cart_version, locked.version);

    assert_refused(
        &h.add(&cart, "SOCKS-3PK", 1).await.unwrap_err(),
        Code::FailedPrecondition,
        "CART_NOT_EDITABLE",
    );
    assert_refused(
        &h.lock(&cart, &rid()).await.unwrap_err(),
        Code::FailedPrecondition,
        "CART_LOCKED_BY_ANOTHER_CHECKOUT",
    );
    // The same checkout locking again (a retry with a new request id) gets its snapshot.
    let again = h.lock(&cart, &checkout).await.unwrap();
    assert_eq!(again.lines, snapshot.lines);

    let unlocked = h.unlock(&checkout).await.unwrap();
    assert!(unlocked.was_locked);
    assert_eq!(unlocked.cart.unwrap().state(), CartState::Active);
    h.add(&cart, "SOCKS-3PK", 1).await.unwrap();
    // A released checkout never locks again; a new checkout may.
    assert_refused(
        &h.lock(&cart, &checkout).await.unwrap_err(),
        Code::FailedPrecondition,
        "CHECKOUT_RELEASED",
    );
    h.lock(&cart, &rid()).await.unwrap();
}

#[tokio::test]
async fn a_lock_refuses_empty_foreign_and_unavailable_carts_and_reprices() {
    let h = harness().await;
    let empty = h.create("alice", "USD").await;
    assert_refused(
        &h.lock(&empty, &rid()).await.unwrap_err(),
        Code::FailedPrecondition,
        "CART_EMPTY",
    );
    let cart = h.create("alice", "USD").await;
    h.add(&cart, "LAMP-DESK", 1).await.unwrap();
    assert_refused(
        &h.lock_as(&rid(), &cart, &rid(), "mallory")
            .await
            .unwrap_err(),
        Code::FailedPrecondition,
        "CART_CUSTOMER_MISMATCH",
    );

    // The catalog changes: the lamp costs more, the mug is withdrawn.
    h.add(&cart, "MUG-CERAMIC", 1).await.unwrap();
    let mut entries: Vec<CatalogEntry> = Catalog::fixture().entries().to_vec();
    for e in &mut entries {
        if e.sku == "MUG-CERAMIC" {
            e.active = false;
        }
        if e.sku == "LAMP-DESK" {
            e.unit_price_minor = 6500;
        }
    }
    let changed = Catalog::parse(
        &serde_json::to_string(&entries_json(&entries)).unwrap(),
        "t",
    )
    .unwrap();
    seed_catalog(&h.db, &changed).await.unwrap();
    let unavailable = h.lock(&cart, &rid()).await.unwrap_err();
    assert_refused(
        &unavailable,
        Code::FailedPrecondition,
        "PRODUCT_UNAVAILABLE",
    );
    assert_eq!(h.get(&cart).await.state(), CartState::Active);

    h.update(&cart, "MUG-CERAMIC", 0).await.unwrap();
    let snapshot = h.lock(&cart, &rid()).await.unwrap();
    assert_eq!(
        snapshot.subtotal.unwrap().amount_minor,
        6500,
        "priced at lock time"
    );
}

fn entries_json(entries: &[CatalogEntry]) -> Vec<serde_json::Value> {
    entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "sku": e.sku, "name": e.name, "description": e.description,
                "unit_price_minor": e.unit_price_minor, "currency_code": e.currency_code,
                "active": e.active,
            })
        })
        .collect()
}

#[tokio::test]
async fn complete_orders_the_cart_for_good() {
    statement_log();
    let h = harness().await;
    let cart = h.create("alice", "EUR").await;
    h.add(&cart, "MUG-CERAMIC-EU", 2).await.unwrap();
    let checkout = rid();
    assert_refused(
        &h.complete(&checkout).await.unwrap_err(),
        Code::FailedPrecondition,
        "CART_NOT_LOCKED",
    );
    h.lock(&cart, &checkout).await.unwrap();
    let before = statement_log().len();
    let ordered = h.complete(&checkout).await.unwrap();
    if h.db.backend() == Backend::Sqlite {
        // The record, the order and the lines went together.
        testing::assert_one_hand_off(
            &statement_log()[before..],
            &[
                "UPDATE cart_checkouts SET state = 'completed'",
                "state = 'ordered'",
                "FROM cart_lines",
            ],
            "FROM cart_lines",
            1,
        );
    }
    assert_eq!(ordered.state(), CartState::Ordered);
    assert_eq!(ordered.lines.len(), 1);
    assert_eq!(ordered.lines[0].quantity, 2);
    assert_eq!(ordered.checkout_id, checkout);
    // Completing again (a retry with a new request id) is harmless.
    assert_eq!(
        h.complete(&checkout).await.unwrap().state(),
        CartState::Ordered
    );
    assert_refused(
        &h.add(&cart, "MUG-CERAMIC-EU", 1).await.unwrap_err(),
        Code::FailedPrecondition,
        "CART_NOT_EDITABLE",
    );
    assert_refused(
        &h.unlock(&checkout).await.unwrap_err(),
        Code::FailedPrecondition,
        "CART_ALREADY_ORDERED",
    );
    assert_refused(
        &h.lock(&cart, &rid()).await.unwrap_err(),
        Code::FailedPrecondition,
        "CART_NOT_ACTIVE",
    );
}

#[tokio::test]
async fn completing_with_another_carts_id_is_refused_and_orders_nothing() {
    let h = harness().await;
    let cart = h.create("alice", "EUR").await;
    h.add(&cart, "MUG-CERAMIC-EU", 2).await.unwrap();
    let other = h.create("alice", "EUR").await;
    let checkout = rid();
    h.lock(&cart, &checkout).await.unwrap();
    let before = h.get(&cart).await;
    let refused = h
        .api
        .complete_cart(Request::new(CompleteCartRequest {
            request_id: rid(),
            cart_id: other.cart_id.clone(),
            checkout_id: checkout.clone(),
        }))
        .await
        .unwrap_err();
    assert_invalid(&refused, "cart_id");
    // The cart is found, locked and ordered by one statement before the cart id is checked:
    // the refusal must take all of that back.
    let after = h.get(&cart).await;
    assert_eq!(after, before, "the locked cart is untouched");
    assert_eq!(after.state(), CartState::CheckingOut);
    assert_eq!(h.get(&other).await.state(), CartState::Active);
    assert_eq!(
        h.complete(&checkout).await.unwrap().state(),
        CartState::Ordered
    );
}

#[tokio::test]
async fn unlock_before_lock_leaves_no_lock_behind() {
    let h = harness().await;
    let cart = h.create("alice", "USD").await;
    h.add(&cart, "CAP-NVY", 1).await.unwrap();
    let checkout = rid();
    let early = h.unlock(&checkout).await.unwrap();
    assert!(!early.was_locked);
    assert!(early.cart.is_none());
    // The late lock (a retry that lost the race) must not lock the cart.
    assert_refused(
        &h.lock(&cart, &checkout).await.unwrap_err(),
        Code::FailedPrecondition,
        "CHECKOUT_RELEASED",
    );
    let after = h.get(&cart).await;
    assert_eq!(after.state(), CartState::Active);
    assert!(after.checkout_id.is_empty());
}

#[tokio::test]
async fn lock_unlock_and_complete_replay_their_first_answer() {
    let h = harness().await;
    let cart = h.create("alice", "USD").await;
    h.add(&cart, "CAP-NVY", 2).await.unwrap();
    let checkout = rid();
    let request_id = rid();
    let first = h
        .lock_as(&request_id, &cart, &checkout, "alice")
        .await
        .unwrap();
    let replay = h
        .lock_as(&request_id, &cart, &checkout, "alice")
        .await
        .unwrap();
    assert_eq!(first, replay);
    assert_eq!(
        h.get(&cart).await.version,
        first.cart_version,
        "no second effect"
    );

    let reused = h
        .lock_as(&request_id, &cart, &rid(), "alice")
        .await
        .unwrap_err();
    assert_refused(&reused, Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED");

    let unlock = UnlockCartRequest {
        request_id: rid(),
        cart_id: cart.cart_id.clone(),
        checkout_id: checkout.clone(),
    };
    let a = h
        .api
        .unlock_cart(Request::new(unlock.clone()))
        .await
        .unwrap()
        .into_inner();
    let b = h
        .api
        .unlock_cart(Request::new(unlock))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a, b);
    assert!(
        a.was_locked && b.was_locked,
        "the replay is the first answer"
    );

    let checkout = rid();
    h.lock(&cart, &checkout).await.unwrap();
    let complete = CompleteCartRequest {
        request_id: rid(),
        cart_id: cart.cart_id.clone(),
        checkout_id: checkout,
    };
    let a = h
        .api
        .complete_cart(Request::new(complete.clone()))
        .await
        .unwrap()
        .into_inner();
    let b = h
        .api
        .complete_cart(Request::new(complete))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_racing_an_edit_has_exactly_one_winner() {
    let h = harness().await;
    let mut outcomes = HashSet::new();
    for _ in 0..20 {
        let cart = h.create("alice", "USD").await;
        h.add(&cart, "TSHIRT-BLK-M", 1).await.unwrap();
        let (api_a, api_b) = (h.api.clone(), h.api.clone());
        let (cart_a, cart_b) = (cart.clone(), cart.clone());
        let checkout = rid();
        let edit = tokio::spawn(async move {
            api_a
                .add_item(Request::new(AddItemRequest {
                    request_id: rid(),
                    cart_id: cart_a.cart_id,
                    customer_id: "alice".to_owned(),
                    sku: "MUG-CERAMIC".to_owned(),
                    quantity: 1,
                }))
                .await
        });
        let lock = tokio::spawn(async move {
            api_b
                .lock_cart(Request::new(LockCartRequest {
                    request_id: rid(),
                    cart_id: cart_b.cart_id,
                    checkout_id: checkout,
                    customer_id: "alice".to_owned(),
                }))
                .await
        });
        let edit = edit.await.unwrap();
        let snapshot = lock.await.unwrap().unwrap().into_inner().snapshot.unwrap();
        let final_cart = h.get(&cart).await;
        // Whatever won, the locked cart is exactly what the snapshot says.
        assert_eq!(
            line_quantities(&final_cart.lines),
            line_quantities(&snapshot.lines)
        );
        match edit {
            Ok(_) => {
                assert_eq!(snapshot.lines.len(), 2, "the edit landed before the lock");
                outcomes.insert("edit first");
            }
            Err(status) => {
                assert_refused(&status, Code::FailedPrecondition, "CART_NOT_EDITABLE");
                assert_eq!(snapshot.lines.len(), 1, "the lock landed before the edit");
                outcomes.insert("lock first");
            }
        }
    }
    assert!(!outcomes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unlock_racing_its_lock_never_leaves_the_cart_locked() {
    let h = harness().await;
    for _ in 0..20 {
        let cart = h.create("alice", "USD").await;
        h.add(&cart, "TSHIRT-BLK-M", 1).await.unwrap();
        let checkout = rid();
        let (api_a, api_b) = (h.api.clone(), h.api.clone());
        let (cart_id, checkout_a, checkout_b) =
            (cart.cart_id.clone(), checkout.clone(), checkout.clone());
        let lock = tokio::spawn(async move {
            api_a
                .lock_cart(Request::new(LockCartRequest {
                    request_id: rid(),
                    cart_id,
                    checkout_id: checkout_a,
                    customer_id: "alice".to_owned(),
                }))
                .await
        });
        let unlock = tokio::spawn(async move {
            api_b
                .unlock_cart(Request::new(UnlockCartRequest {
                    request_id: rid(),
                    cart_id: String::new(),
                    checkout_id: checkout_b,
                }))
                .await
        });
        let lock = lock.await.unwrap();
        let unlock = unlock.await.unwrap().unwrap().into_inner();
        match lock {
            Ok(_) => assert!(unlock.was_locked, "a lock that won was released"),
            Err(status) => {
                assert_refused(&status, Code::FailedPrecondition, "CHECKOUT_RELEASED");
                assert!(!unlock.was_locked);
            }
        }
        let after = h.get(&cart).await;
        assert_eq!(after.state(), CartState::Active);
        assert!(after.checkout_id.is_empty());
    }
}
