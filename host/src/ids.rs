//! Ids of sandboxes and containers: 64 random hex digits, found again by a unique prefix
//! (as crictl lets users type).

/// A fresh id: 32 random bytes as hex.
pub fn random_id() -> String {
    let mut b = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    hex::encode(b)
}

/// Why a prefix found nothing usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The prefix is empty.
    #[error("the id is empty")]
    Empty,
    /// Several items start with it.
    #[error("id prefix {0:?} is ambiguous")]
    Ambiguous(String),
}

/// The one item whose id starts with `prefix`, if any.
pub fn by_prefix<T>(
    items: Vec<T>,
    prefix: &str,
    id: impl Fn(&T) -> &str,
) -> Result<Option<T>, PrefixError> {
    if prefix.is_empty() {
        return Err(PrefixError::Empty);
    }
    let mut hits = items.into_iter().filter(|i| id(i).starts_with(prefix));
    let first = hits.next();
    if hits.next().is_some() {
        return Err(PrefixError::Ambiguous(prefix.to_owned()));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_hex_and_prefixes_must_be_unique() {
        let (a, b) = (random_id(), random_id());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        let items = vec!["abc1".to_owned(), "abd2".to_owned()];
        assert_eq!(
            by_prefix(items.clone(), "abc", |s| s),
            Ok(Some("abc1".to_owned()))
        );
        assert_eq!(
            by_prefix(items.clone(), "ab", |s| s),
            Err(PrefixError::Ambiguous("ab".into()))
        );
        assert_eq!(by_prefix(items.clone(), "x", |s| s), Ok(None));
        assert_eq!(by_prefix(items, "", |s| s), Err(PrefixError::Empty));
    }
}
