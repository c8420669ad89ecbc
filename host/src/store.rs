//! moatd's embedded transactional store (redb): one database file under the root dir.
//! Each subsystem defines its own tables next to the code that uses them.

use std::path::Path;
use std::sync::Arc;

use std::marker::PhantomData;

use redb::{Database, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// A table of JSON records by string key, one transaction per write.
pub struct JsonTable<T> {
    store: Store,
    def: TableDefinition<'static, &'static str, &'static [u8]>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for JsonTable<T> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            def: self.def,
            _t: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> JsonTable<T> {
    /// Opens (creating) the table `name`.
    pub fn open(store: Store, name: &'static str) -> Result<Self, StoreError> {
        let def = TableDefinition::new(name);
        let txn = store.db().begin_write().map_err(e)?;
        txn.open_table(def).map_err(e)?;
        txn.commit().map_err(e)?;
        Ok(Self {
            store,
            def,
            _t: PhantomData,
        })
    }

    /// Writes a record.
    pub fn put(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(e)?;
        let txn = self.store.db().begin_write().map_err(e)?;
        {
            let mut t = txn.open_table(self.def).map_err(e)?;
            t.insert(key, bytes.as_slice()).map_err(e)?;
        }
        txn.commit().map_err(e)
    }

    /// Deletes a record; absent is fine.
    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        let txn = self.store.db().begin_write().map_err(e)?;
        {
            let mut t = txn.open_table(self.def).map_err(e)?;
            t.remove(key).map_err(e)?;
        }
        txn.commit().map_err(e)
    }

    /// Every record.
    pub fn list(&self) -> Result<Vec<T>, StoreError> {
        use redb::ReadableDatabase;
        let txn = self.store.db().begin_read().map_err(e)?;
        let t = txn.open_table(self.def).map_err(e)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(e)? {
            let (_, v) = item.map_err(e)?;
            out.push(serde_json::from_slice(v.value()).map_err(e)?);
        }
        Ok(out)
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

    #[test]
    fn json_tables_put_list_delete() {
        let dir = tempfile::tempdir().expect("tmp");
        let t: JsonTable<Vec<u32>> =
            JsonTable::open(Store::open(&dir.path().join("db")).expect("store"), "t")
                .expect("table");
        t.put("a", &vec![1, 2]).expect("put");
        t.put("b", &vec![3]).expect("put");
        assert_eq!(t.list().expect("list"), vec![vec![1, 2], vec![3]]);
        t.delete("a").expect("delete");
        t.delete("a").expect("absent is fine");
        assert_eq!(t.list().expect("list"), vec![vec![3]]);
    }
}
