//! Bearer tokens (RFC 6750) on every HTTP listener: the MCP endpoint, the proxy's front and the
//! admin listener read them the same way.

use axum::http::{HeaderMap, header};

/// The token of an `Authorization: Bearer <token>` header. The scheme name is matched without
/// regard to case (`bearer`, `BEARER`), as RFC 9110 §11.1 has it; spaces around the token are
/// dropped.
pub fn token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim_start();
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Equal in time that depends only on the expected token's length.
pub fn matches(expected: &str, given: &str) -> bool {
    let (e, g) = (expected.as_bytes(), given.as_bytes());
    e.len() == g.len() && e.iter().zip(g).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The request carries `expected` as its bearer token.
pub fn carries(headers: &HeaderMap, expected: &str) -> bool {
    token(headers).is_some_and(|t| matches(expected, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn the_scheme_is_matched_without_case_and_the_token_exactly() {
        for v in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret ", " Bearer s3cret"] {
            assert!(carries(&headers(v), "s3cret"), "{v}");
        }
        for v in ["Bearer S3cret", "Basic s3cret", "Bearers3cret", "Bearer s3cret2", "Bearer"] {
            assert!(!carries(&headers(v), "s3cret"), "{v}");
        }
        assert!(!carries(&HeaderMap::new(), "s3cret"));
        assert!(matches("secret", "secret") && !matches("secret", "secreT") && !matches("secret", "secret2"));
    }
}
