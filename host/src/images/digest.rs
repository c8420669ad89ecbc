//! Content digests, in one place: their syntax (`sha256:` and 64 lowercase hex digits, so a
//! digest is safe as a file name), computing them, and the check that content is what its
//! digest says.

use sha2::{Digest as _, Sha256};

use super::error::ImageError;

/// Checks a digest's syntax; returns its hex part.
pub fn validate(digest: &str) -> Result<&str, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(hex)
        }
        _ => Err(ImageError::Unsupported {
            reference: digest.into(),
            detail: "only sha256 digests of 64 lowercase hex digits are supported".into(),
        }),
    }
}

/// The digest of some bytes.
pub fn of(bytes: &[u8]) -> String {
    finish(Sha256::new_with_prefix(bytes))
}

/// The digest of what `hasher` has seen.
pub fn finish(hasher: Sha256) -> String {
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Content from `source` whose digest is `actual` is what `expected` names, or
/// DigestMismatch.
pub fn check(source: &str, expected: &str, actual: String) -> Result<(), ImageError> {
    if actual == expected {
        return Ok(());
    }
    Err(ImageError::DigestMismatch {
        registry: source.into(),
        expected: expected.into(),
        actual,
    })
}

/// `check` for bytes in memory.
pub fn check_bytes(source: &str, expected: &str, bytes: &[u8]) -> Result<(), ImageError> {
    check(source, expected, of(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_computed_checked_and_validated() {
        let d = of(b"hello");
        assert_eq!(
            d,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(finish(Sha256::new_with_prefix(b"hello")), d);
        check_bytes("r", &d, b"hello").expect("matches");
        let e = check_bytes("r", &d, b"hellO").expect_err("mismatch");
        assert!(matches!(e, ImageError::DigestMismatch { ref expected, .. } if *expected == d));
        assert!(validate(&d).is_ok());
        for bad in ["sha256:../../etc", "md5:abc", "sha256:ABCDEF", ""] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}
