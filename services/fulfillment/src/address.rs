//! Shipping addresses: field-level checks and the set of countries served.

use std::collections::BTreeSet;

use checkout_kit::validate::Violations;
use checkout_proto::common::Address;

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

fn text(v: &mut Violations, field: &str, value: &str, required: bool, max: usize) {
    if required && value.trim().is_empty() {
        v.add(field, "required");
    } else if value.chars().count() > max {
        v.add(field, &format!("at most {max} characters"));
    } else if value.chars().any(char::is_control) {
        v.add(field, "must not contain control characters");
    }
}

/// Checks every field of an address, naming each bad one under `prefix`.
pub fn check(v: &mut Violations, prefix: &str, address: Option<&Address>) {
    let Some(a) = address else {
        v.add(prefix, "required");
        return;
    };
    let f = |name: &str| format!("{prefix}.{name}");
    text(v, &f("recipient_name"), &a.recipient_name, true, 200);
    text(v, &f("line1"), &a.line1, true, 200);
    text(v, &f("line2"), &a.line2, false, 200);
    text(v, &f("city"), &a.city, true, 100);
    text(v, &f("region"), &a.region, false, 100);
    text(v, &f("postal_code"), &a.postal_code, true, 20);
    v.check(
        a.postal_code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '-'),
        &f("postal_code"),
        "letters, digits, spaces and '-' only",
    );
    v.check(
        a.country_code.len() == 2 && a.country_code.bytes().all(|b| b.is_ascii_uppercase()),
        &f("country_code"),
        "an ISO 3166-1 alpha-2 code such as DE",
    );
    v.check(
        a.phone.len() <= 32
            && a.phone
                .chars()
                .all(|c| c.is_ascii_digit() || " +-()".contains(c)),
        &f("phone"),
        "at most 32 digits, spaces, '+', '-', '(' or ')'",
    );
}

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
