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

/// A store error, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file cannot be opened.
    #[error("state database {path}: {source}; is another moatd using the same root_dir?")]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: redb::DatabaseError,
    },
    /// A transaction, table or storage operation failed.
    #[error("state database: {0}")]
    Db(#[from] redb::Error),
    /// A record does not (de)serialize.
    #[error("state database: record {key:?} of table {table}: {source}")]
    Record {
        /// The table.
        table: &'static str,
        /// The record's key.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Any of redb's error types, as a `StoreError`.
fn e(err: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(err.into())
}

impl Store {
    /// Opens or creates the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
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

/// A kind of record kept as JSON in a table of its own, keyed by its id.
pub trait Record: Serialize + DeserializeOwned {
    /// The table's name.
    const TABLE: &'static str;
    /// The record's key.
    fn key(&self) -> &str;
}

/// The table of one kind of record, one transaction per write. Sandboxes and containers
/// are kept in one each.
pub struct Table<T> {
    store: Store,
    def: TableDefinition<'static, &'static str, &'static [u8]>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Table<T> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            def: self.def,
            _t: PhantomData,
        }
    }
}

impl<T: Record> Table<T> {
    /// Opens (creating) the table of `T`.
    pub fn open(store: Store) -> Result<Self, StoreError> {
        let def = TableDefinition::new(T::TABLE);
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
    pub fn put(&self, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Record {
            table: T::TABLE,
            key: value.key().to_owned(),
            source,
        })?;
        // Writers wait for each other and a commit syncs to disk: off the async workers.
        crate::sync::off_the_workers(|| {
            let txn = self.store.db().begin_write().map_err(e)?;
            {
                let mut t = txn.open_table(self.def).map_err(e)?;
                t.insert(value.key(), bytes.as_slice()).map_err(e)?;
            }
            txn.commit().map_err(e)
        })
    }

    /// The record with key `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<T>, StoreError> {
        use redb::ReadableDatabase;
        let txn = self.store.db().begin_read().map_err(e)?;
        let t = txn.open_table(self.def).map_err(e)?;
        let Some(v) = t.get(key).map_err(e)? else {
            return Ok(None);
        };
        self.decode(key, v.value()).map(Some)
    }

    /// Deletes a record; absent is fine.
    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        crate::sync::off_the_workers(|| {
            let txn = self.store.db().begin_write().map_err(e)?;
            {
                let mut t = txn.open_table(self.def).map_err(e)?;
                t.remove(key).map_err(e)?;
            }
            txn.commit().map_err(e)
        })
    }

    /// Every record.
    pub fn list(&self) -> Result<Vec<T>, StoreError> {
        use redb::ReadableDatabase;
        let txn = self.store.db().begin_read().map_err(e)?;
        let t = txn.open_table(self.def).map_err(e)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(e)? {
            let (k, v) = item.map_err(e)?;
            out.push(self.decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn decode(&self, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Record {
            table: T::TABLE,
            key: key.to_owned(),
            source,
        })
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

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Item {
        id: String,
        n: u32,
    }

    impl Record for Item {
        const TABLE: &'static str = "items";
        fn key(&self) -> &str {
            &self.id
        }
    }

    fn item(id: &str, n: u32) -> Item {
        Item { id: id.into(), n }
    }

    #[test]
    fn tables_put_get_list_delete() {
        let dir = tempfile::tempdir().expect("tmp");
        let t: Table<Item> =
            Table::open(Store::open(&dir.path().join("db")).expect("store")).expect("table");
        t.put(&item("a", 1)).expect("put");
        t.put(&item("b", 2)).expect("put");
        assert_eq!(t.get("a").expect("get"), Some(item("a", 1)));
        assert_eq!(t.get("c").expect("get"), None);
        assert_eq!(t.list().expect("list"), vec![item("a", 1), item("b", 2)]);
        t.delete("a").expect("delete");
        t.delete("a").expect("absent is fine");
        assert_eq!(t.list().expect("list"), vec![item("b", 2)]);
    }

    #[test]
    fn a_record_that_does_not_decode_names_its_table_and_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("db")).expect("store");
        let txn = store.db().begin_write().expect("txn");
        {
            let def: TableDefinition<&str, &[u8]> = TableDefinition::new("items");
            let mut t = txn.open_table(def).expect("table");
            t.insert("bad", b"{not json".as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
        let t: Table<Item> = Table::open(store).expect("table");
        let err = t.get("bad").expect_err("undecodable");
        assert!(matches!(err, StoreError::Record { table: "items", ref key, .. } if key == "bad"));
        assert!(
            std::error::Error::source(&err).is_some(),
            "the cause is kept"
        );
    }
}
