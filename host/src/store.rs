//! moatd's embedded transactional store (redb): one database file under the root dir.
//! Each subsystem defines its own tables next to the code that uses them.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, TableDefinition};

/// Small runtime-wide values (the pod CIDR, ...).
pub const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// The database, shared.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

/// A store error, stringified at this edge (redb has several error types).
#[derive(Debug, thiserror::Error)]
#[error("state database: {0}")]
pub struct StoreError(pub String);

fn e(err: impl std::fmt::Display) -> StoreError {
    StoreError(err.to_string())
}

impl Store {
    /// Opens or creates the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|err| {
            StoreError(format!(
                "{err} ({}); is another moatd using the same root_dir?",
                path.display()
            ))
        })?;
        let txn = db.begin_write().map_err(e)?;
        txn.open_table(META).map_err(e)?;
        txn.commit().map_err(e)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// The database.
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// Reads a META value.
    pub fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read().map_err(e)?;
        let t = txn.open_table(META).map_err(e)?;
        Ok(t.get(key).map_err(e)?.map(|v| v.value().to_owned()))
    }

    /// Writes a META value.
    pub fn put_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(e)?;
        {
            let mut t = txn.open_table(META).map_err(e)?;
            t.insert(key, value).map_err(e)?;
        }
        txn.commit().map_err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_survives_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("moat.redb");
        {
            let s = Store::open(&p).expect("open");
            assert_eq!(s.get_meta("k").expect("get"), None);
            s.put_meta("k", "v").expect("put");
        }
        let s = Store::open(&p).expect("reopen");
        assert_eq!(s.get_meta("k").expect("get").as_deref(), Some("v"));
    }
}
