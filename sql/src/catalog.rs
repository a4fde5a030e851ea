//! The persisted catalog: the tables created with `CREATE EXTERNAL TABLE`, kept in
//! the data dir so they survive a coordinator restart.
//!
//! Each entry keeps the statement that created the table; start-up replays them.
//! The file is replaced atomically (write to a temporary file, then rename), so a
//! crash leaves either the old or the new catalog, never half of one.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SqlError};

/// One persisted table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Lower-case table name.
    pub name: String,
    /// The `CREATE EXTERNAL TABLE` statement, with the checked location.
    pub create_sql: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CatalogFile {
    version: u32,
    tables: Vec<CatalogEntry>,
}

/// The catalog file and its in-memory copy.
#[derive(Debug)]
pub struct PersistentCatalog {
    path: PathBuf,
    entries: Mutex<Vec<CatalogEntry>>,
}

const FILE_NAME: &str = "catalog.json";

impl PersistentCatalog {
    /// Opens (or starts) the catalog in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| SqlError::io(data_dir, e))?;
        let path = data_dir.join(FILE_NAME);
        let entries = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: CatalogFile =
                    serde_json::from_slice(&bytes).map_err(|e| SqlError::CatalogCorrupt {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                file.tables
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(SqlError::io(&path, e)),
        };
        Ok(Self {
            path,
            entries: Mutex::new(entries),
        })
    }

    /// The persisted tables, in creation order.
    pub fn entries(&self) -> Vec<CatalogEntry> {
        self.lock().clone()
    }

    /// Adds (or replaces) a table and writes the file before returning.
    pub fn upsert(&self, entry: CatalogEntry) -> Result<()> {
        let mut entries = self.lock();
        let mut next = entries.clone();
        next.retain(|e| e.name != entry.name);
        next.push(entry);
        self.write(&next)?;
        *entries = next;
        Ok(())
    }

    /// Removes a table; returns whether it was there.
    pub fn remove(&self, name: &str) -> Result<bool> {
        let mut entries = self.lock();
        let mut next = entries.clone();
        next.retain(|e| e.name != name);
        if next.len() == entries.len() {
            return Ok(false);
        }
        self.write(&next)?;
        *entries = next;
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<CatalogEntry>> {
        // A panic while holding the lock cannot leave the vector half-written
        // (it is replaced whole), so a poisoned lock is still consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, entries: &[CatalogEntry]) -> Result<()> {
        let file = CatalogFile {
            version: 1,
            tables: entries.to_vec(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| SqlError::CatalogCorrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| SqlError::io(dir, e))?;
        std::fs::write(tmp.path(), &bytes).map_err(|e| SqlError::io(tmp.path(), e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| SqlError::io(tmp.path(), e))?;
        tmp.persist(&self.path)
            .map_err(|e| SqlError::io(&self.path, e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = PersistentCatalog::open(dir.path()).unwrap();
        let entry = CatalogEntry {
            name: "t".into(),
            create_sql: "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/x'".into(),
        };
        catalog.upsert(entry.clone()).unwrap();
        let reopened = PersistentCatalog::open(dir.path()).unwrap();
        assert_eq!(reopened.entries(), vec![entry]);
        assert!(reopened.remove("t").unwrap());
        assert!(!reopened.remove("t").unwrap());
        assert!(PersistentCatalog::open(dir.path())
            .unwrap()
            .entries()
            .is_empty());
    }

    #[test]
    fn corrupt_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        let err = PersistentCatalog::open(dir.path()).unwrap_err();
        assert!(matches!(err, SqlError::CatalogCorrupt { .. }));
    }
}
