//! Inventory under contention, over gRPC: a flash sale never oversells, and contended
//! multi-line reservations never leave a partial reservation behind.

use checkout::role::Role;
use checkout_kit::client::OutboundChannel;
use checkout_kit::status::reason_of;
use checkout_proto::inventory::inventory_service_client::InventoryServiceClient;
use checkout_proto::inventory::{
    GetStockRequest, ReservationLine, ReserveStockRequest, SetStockRequest,
};
use tonic::Code;

use crate::helpers::{channel, spawn_system};

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn set_stock(client: &mut InventoryServiceClient<OutboundChannel>, sku: &str, on_hand: i64) {
    client
        .set_stock(SetStockRequest {
            request_id: rid(),
            sku: sku.to_owned(),
            warehouse_id: "wh-east".to_owned(),
            on_hand,
        })
        .await
        .unwrap();
}

async fn reserved(client: &mut InventoryServiceClient<OutboundChannel>, sku: &str) -> (i64, i64) {
    let stock = client
        .get_stock(GetStockRequest {
            sku: sku.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let on_hand = stock.levels.iter().map(|l| l.on_hand).sum();
    let reserved = stock.levels.iter().map(|l| l.reserved).sum();
    (on_hand, reserved)
}

/// Sends concurrent reservations (retrying ABORTED as the orchestrator would) and counts
/// how many succeeded and how many were out of stock.
async fn contend(
    client: &InventoryServiceClient<OutboundChannel>,
    requests: usize,
    lines: Vec<ReservationLine>,
) -> (usize, usize) {
    let tasks: Vec<_> = (0..requests)
        .map(|_| {
            let mut client = client.clone();
            let request = ReserveStockRequest {
                request_id: rid(),
                checkout_id: rid(),
                lines: lines.clone(),
                ttl: None,
            };
            tokio::spawn(async move {
                loop {
                    match client.reserve_stock(request.clone()).await {
                        Err(status) if status.code() == Code::Aborted => continue,
                        other => return other,
                    }
                }
            })
        })
        .collect();
    let (mut won, mut sold_out) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert_eq!(reason_of(&status).as_deref(), Some("OUT_OF_STOCK"));
                sold_out += 1;
            }
        }
    }
    (won, sold_out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flash_sale_sells_exactly_the_stock() {
    let sys = spawn_system().await;
    let mut client = InventoryServiceClient::new(channel(&sys.endpoint(Role::Inventory)).await);
    set_stock(&mut client, "FLASH-SALE", 100).await;

    let one = vec![ReservationLine {
        sku: "FLASH-SALE".to_owned(),
        quantity: 1,
    }];
    let (won, sold_out) = contend(&client, 200, one).await;
    assert_eq!((won, sold_out), (100, 100));
    assert_eq!(reserved(&mut client, "FLASH-SALE").await, (100, 100));
    sys.system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contended_multi_line_reservations_are_never_partial() {
    let sys = spawn_system().await;
    let mut client = InventoryServiceClient::new(channel(&sys.endpoint(Role::Inventory)).await);
    set_stock(&mut client, "HOT-A", 30).await;
    set_stock(&mut client, "HOT-B", 50).await;

    let both = vec![
        ReservationLine {
            sku: "HOT-B".to_owned(),
            quantity: 1,
        },
        ReservationLine {
            sku: "HOT-A".to_owned(),
            quantity: 1,
        },
    ];
    let (won, sold_out) = contend(&client, 60, both).await;
    assert_eq!((won, sold_out), (30, 30));
    // Every reservation that won holds one of each; no loser holds anything.
    assert_eq!(reserved(&mut client, "HOT-A").await, (30, 30));
    assert_eq!(reserved(&mut client, "HOT-B").await, (50, 30));
    sys.system.stop().await.unwrap();
}
