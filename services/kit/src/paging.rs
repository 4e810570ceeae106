//! AIP-158 paging: page sizes with a default and a ceiling, and opaque page tokens bound to the
//! listing's filter, so a token cannot be replayed against a different query.

use crate::status::Rejection;

/// The page size to use: the default for 0, the ceiling for anything larger; negative sizes are
/// refused.
pub fn page_size(requested: i32, default: usize, max: usize) -> Result<usize, Rejection> {
    match usize::try_from(requested) {
        Ok(0) => Ok(default),
        Ok(n) => Ok(n.min(max)),
        Err(_) => Err(Rejection::invalid_field(
            "page_size",
            "must not be negative",
        )),
    }
}

/// Encodes the cursor of the next page, bound to the listing's filter.
pub fn encode_token(filter: &str, cursor: &str) -> String {
    let raw = format!("v1\u{0}{filter}\u{0}{cursor}");
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The cursor a token carries (`None` for the first page); a token that was not produced for
/// this filter is refused naming `page_token`.
pub fn decode_token(token: &str, filter: &str) -> Result<Option<String>, Rejection> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Rejection::invalid_field("page_token", "not a token from this listing");
    // Hex digits only, checked first: slicing a multi-byte character would panic.
    if !token.len().is_multiple_of(2)
        || token.len() > 4096
        || !token.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(invalid());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.splitn(3, '\u{0}');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some(f), Some(cursor)) if f == filter => Ok(Some(cursor.to_owned())),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_only_for_their_filter() {
        let token = encode_token("USD", "SKU-9");
        assert_eq!(
            decode_token(&token, "USD").unwrap().as_deref(),
            Some("SKU-9")
        );
        assert!(decode_token(&token, "EUR").is_err());
        assert!(decode_token("zz", "USD").is_err());
        assert!(decode_token("abc", "USD").is_err());
        assert_eq!(decode_token("", "USD").unwrap(), None);
        // Found by the fuzzer: a multi-byte character straddling a digit pair.
        assert!(decode_token("aé", "USD").is_err());
        assert!(decode_token("éé", "USD").is_err());
    }

    proptest::proptest! {
        #[test]
        fn no_token_makes_decoding_panic(token in "\\PC{0,64}|[0-9a-f]{0,64}", filter in ".{0,8}") {
            let _ = decode_token(&token, &filter);
        }
    }

    #[test]
    fn sizes_default_and_cap() {
        assert_eq!(page_size(0, 50, 500).unwrap(), 50);
        assert_eq!(page_size(7, 50, 500).unwrap(), 7);
        assert_eq!(page_size(10_000, 50, 500).unwrap(), 500);
        assert!(page_size(-1, 50, 500).is_err());
    }
}
