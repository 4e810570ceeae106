//! The warehouses and opening stock shipped in the repository (or an operator's file of the same
//! shape). Warehouses are upserted at start; stock rows are only created when absent, so a
//! restart never overwrites stock that reservations and restocks have changed since.

use checkout_kit::validate::is_sku;
use serde::Deserialize;

/// The fixture shipped with the repository: three warehouses, stock for the catalog's skus.
pub const FIXTURE: &str = include_str!("../fixtures/stock.json");

/// A warehouse as the fixture describes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseEntry {
    /// Warehouse id.
    pub warehouse_id: String,
    /// Region it serves.
    pub region: String,
    /// Allocation order: lower first.
    pub priority: i32,
}

/// Opening stock of one sku in one warehouse.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockEntry {
    /// Stock keeping unit.
    pub sku: String,
    /// Warehouse.
    pub warehouse_id: String,
    /// Units on hand.
    pub on_hand: i64,
}

/// Warehouses and opening stock.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockFixture {
    /// Warehouses.
    pub warehouses: Vec<WarehouseEntry>,
    /// Opening stock.
    pub stock: Vec<StockEntry>,
}

/// A fixture that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("stock fixture: {0}")]
pub struct FixtureError(String);

impl StockFixture {
    /// The fixture shipped with the repository.
    pub fn shipped() -> Self {
        Self::parse(FIXTURE).expect("the shipped stock fixture is valid (tested)")
    }

    /// Parses and validates a fixture.
    pub fn parse(text: &str) -> Result<Self, FixtureError> {
        let fixture: Self =
            serde_json::from_str(text).map_err(|e| FixtureError(format!("not valid JSON: {e}")))?;
        let ids: std::collections::HashSet<&str> = fixture
            .warehouses
            .iter()
            .map(|w| w.warehouse_id.as_str())
            .collect();
        if ids.len() != fixture.warehouses.len() {
            return Err(FixtureError("a warehouse appears twice".to_owned()));
        }
        for entry in &fixture.stock {
            if !is_sku(&entry.sku) {
                return Err(FixtureError(format!("malformed sku `{}`", entry.sku)));
            }
            if !ids.contains(entry.warehouse_id.as_str()) {
                return Err(FixtureError(format!(
                    "stock of {} names unknown warehouse `{}`",
                    entry.sku, entry.warehouse_id
                )));
            }
            if entry.on_hand < 0 {
                return Err(FixtureError(format!("negative stock of {}", entry.sku)));
            }
        }
        Ok(fixture)
    }
}

impl Default for StockFixture {
    fn default() -> Self {
        Self::shipped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_fixture_is_valid() {
        let fixture = StockFixture::parse(FIXTURE).unwrap();
        assert_eq!(fixture.warehouses.len(), 3);
        assert!(fixture.stock.len() > 30);
    }

    #[test]
    fn bad_fixtures_are_refused() {
        let unknown =
            r#"{"warehouses": [], "stock": [{"sku": "A", "warehouse_id": "x", "on_hand": 1}]}"#;
        assert!(
            StockFixture::parse(unknown)
                .unwrap_err()
                .to_string()
                .contains("unknown warehouse")
        );
        let negative = r#"{"warehouses": [{"warehouse_id": "x", "region": "r", "priority": 1}],
                          "stock": [{"sku": "A", "warehouse_id": "x", "on_hand": -1}]}"#;
        assert!(StockFixture::parse(negative).is_err());
    }
}
