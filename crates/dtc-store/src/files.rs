//! Creating a redb file so that a crash can never leave a half-made one.
//!
//! `redb::Database::create` on a new path sizes the file, writes and syncs a
//! header, then writes the magic number. A crash in between leaves a file
//! that every later `create` refuses ("magic number mismatch"), so the node
//! would not start until someone deleted the file by hand. A new database is
//! therefore built through [`dtc_util::fs::create_atomically`]: under a
//! temporary name, synced, renamed into place: the real path either does not
//! exist or holds a complete database.

use crate::StoreError;
use dtc_util::fs::{AtomicError, create_atomically};
use std::path::Path;

/// Opens the redb database at `path`, creating it atomically if it is missing.
pub fn create_database(builder: &redb::Builder, path: &Path) -> Result<redb::Database, StoreError> {
    create_atomically(path, |tmp| builder.create(tmp).map(drop)).map_err(|e| match e {
        AtomicError::Fill(e) => StoreError::from(e),
        AtomicError::Io { path, source } => StoreError::Io { path, source },
    })?;
    Ok(builder.create(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtc_util::fs::creating_path;

    #[test]
    fn a_leftover_half_created_file_does_not_stop_creation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        // What a crash mid-creation leaves behind: a zero-filled temporary file.
        std::fs::write(creating_path(&path), vec![0u8; 72 * 1024]).unwrap();
        let db = create_database(&redb::Builder::new(), &path).unwrap();
        drop(db);
        assert!(!creating_path(&path).exists());
        // And the created file reopens.
        create_database(&redb::Builder::new(), &path).unwrap();
    }
}
