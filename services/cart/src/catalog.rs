//! The product catalog source: the fixture shipped in the repository, or an operator's own JSON
//! file of the same shape. The source is upserted at start, so it is the truth for every sku it
//! names; products it does not name are left as they are.

use std::path::Path;

use checkout_kit::validate::is_currency_code;
pub use checkout_kit::validate::is_sku;
use serde::Deserialize;

/// The catalog shipped with the repository: three dozen products in USD, EUR, JPY and GBP.
pub const FIXTURE: &str = include_str!("../fixtures/catalog.json");

/// One product as a catalog file describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// Stock keeping unit: upper-case letters, digits, `-`, `_` and `.`.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Longer description.
    #[serde(default)]
    pub description: String,
    /// Price of one unit in minor units.
    pub unit_price_minor: i64,
    /// ISO 4217 currency code.
    pub currency_code: String,
    /// Whether it can be added to carts.
    #[serde(default = "active_by_default")]
    pub active: bool,
}

fn active_by_default() -> bool {
    true
}

/// A validated list of catalog entries.
#[derive(Debug, Clone)]
pub struct Catalog {
    entries: Vec<CatalogEntry>,
}

/// A catalog source that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read.
    #[error("cannot read catalog file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a JSON list of products.
    #[error("catalog {origin} is not a JSON list of products: {source}")]
    Parse {
        /// Where it came from.
        origin: String,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
    /// One product is invalid.
    #[error("catalog {origin}: product `{sku}` {problem}")]
    Invalid {
        /// Where it came from.
        origin: String,
        /// The product.
        sku: String,
        /// What is wrong.
        problem: &'static str,
    },
}

impl Catalog {
    /// The fixture shipped with the repository.
    pub fn fixture() -> Self {
        Self::parse(FIXTURE, "fixture").expect("the shipped fixture is valid (tested)")
    }

    /// An operator's catalog file.
    pub fn from_file(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates a JSON list of products.
    pub fn parse(text: &str, origin: &str) -> Result<Self, CatalogError> {
        let entries: Vec<CatalogEntry> =
            serde_json::from_str(text).map_err(|source| CatalogError::Parse {
                origin: origin.to_owned(),
                source,
            })?;
        let invalid = |sku: &str, problem| CatalogError::Invalid {
            origin: origin.to_owned(),
            sku: sku.to_owned(),
            problem,
        };
        let mut seen = std::collections::HashSet::new();
        for entry in &entries {
            if !is_sku(&entry.sku) {
                return Err(invalid(
                    &entry.sku,
                    "has a malformed sku (A-Z, 0-9, '-', '_', '.'; at most 64)",
                ));
            }
            if !seen.insert(entry.sku.as_str()) {
                return Err(invalid(&entry.sku, "appears twice"));
            }
            if entry.name.trim().is_empty() || entry.name.chars().count() > 200 {
                return Err(invalid(&entry.sku, "needs a name of 1 to 200 characters"));
            }
            if entry.unit_price_minor < 0 {
                return Err(invalid(&entry.sku, "has a negative price"));
            }
            if !is_currency_code(&entry.currency_code) {
                return Err(invalid(&entry.sku, "has a malformed currency code"));
            }
        }
        Ok(Self { entries })
    }

    /// The products.
    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Self::fixture()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_has_dozens_of_products_in_several_currencies() {
        let catalog = Catalog::parse(FIXTURE, "fixture").unwrap();
        assert!(catalog.entries().len() >= 24);
        let currencies: std::collections::HashSet<_> = catalog
            .entries()
            .iter()
            .map(|e| e.currency_code.as_str())
            .collect();
        assert!(currencies.len() >= 2, "{currencies:?}");
        assert!(catalog.entries().iter().any(|e| !e.active));
    }

    #[test]
    fn bad_catalogs_are_refused_with_the_product_named() {
        let cases = [
            (r#"{"sku": "A"}"#, "not a JSON list"),
            (
                r#"[{"sku": "a b", "name": "x", "unit_price_minor": 1, "currency_code": "USD"}]"#,
                "malformed sku",
            ),
            (
                r#"[{"sku": "A", "name": "x", "unit_price_minor": -1, "currency_code": "USD"}]"#,
                "negative price",
            ),
            (
                r#"[{"sku": "A", "name": "x", "unit_price_minor": 1, "currency_code": "usd"}]"#,
                "currency",
            ),
            (
                r#"[{"sku": "A", "name": "x", "unit_price_minor": 1, "currency_code": "USD"},
                 {"sku": "A", "name": "y", "unit_price_minor": 2, "currency_code": "USD"}]"#,
                "twice",
            ),
            (
                r#"[{"sku": "A", "name": "x", "unit_price_minor": 1, "currency_code": "USD", "price": 2}]"#,
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let err = Catalog::parse(text, "test").unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
