//! Shipping addresses: field-level checks and the set of countries served.

use std::collections::BTreeSet;

/// Antarctica: never served, whatever the configuration says.
pub const NEVER_SERVED: &str = "AQ";

/// The countries shipments go to (ISO 3166-1 alpha-2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedCountries(BTreeSet<String>);

/// A served-countries list that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("served countries: {0}")]
pub struct CountriesError(String);

impl ServedCountries {
    /// The default: North America, the EU's larger markets, the UK, Japan and Australia.
    pub fn default_set() -> Self {
        Self::parse("US,CA,MX,GB,IE,DE,FR,NL,BE,AT,ES,PT,IT,SE,DK,FI,PL,CZ,JP,AU,NZ")
            .expect("the default list is valid")
    }

    /// Parses a comma-separated list of country codes; Antarctica is refused.
    pub fn parse(list: &str) -> Result<Self, CountriesError> {
        let mut set = BTreeSet::new();
        for code in list.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(CountriesError(format!(
                    "`{code}` is not an ISO 3166-1 alpha-2 code"
                )));
            }
            if code == NEVER_SERVED {
                return Err(CountriesError("Antarctica (AQ) is never served".to_owned()));
            }
            set.insert(code.to_owned());
        }
        if set.is_empty() {
            return Err(CountriesError("at least one country is needed".to_owned()));
        }
        Ok(Self(set))
    }

    /// True when shipments go to this country.
    pub fn serves(&self, country_code: &str) -> bool {
        country_code != NEVER_SERVED && self.0.contains(country_code)
    }
}

impl Default for ServedCountries {
    fn default() -> Self {
        Self::default_set()
    }
}

/// Checks every field of an address, naming each bad one under `prefix`.
pub use checkout_kit::validate::check_address as check;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn antarctica_is_never_served() {
        assert!(ServedCountries::parse("US,AQ").is_err());
        assert!(!ServedCountries::default_set().serves("AQ"));
        assert!(ServedCountries::default_set().serves("DE"));
        assert!(ServedCountries::parse("us").is_err());
        assert!(ServedCountries::parse(" , ").is_err());
    }
}
