//! Creating a redb file so that a crash can never leave a half-made one.
//!
//! `redb::Database::create` on a new path sizes the file, writes and syncs a
//! header, then writes the magic number. A crash in between leaves a file
//! that every later `create` refuses ("magic number mismatch"), so the node
//! would not start until someone deleted the file by hand. We therefore build
//! a new database under a temporary name and rename it into place, syncing
//! the file and its directory: the real path either does not exist or holds
//! a complete database.

use std::path::{Path, PathBuf};

/// Opens the redb database at `path`, creating it atomically if it is missing.
pub fn create_database(
    builder: &redb::Builder,
    path: &Path,
) -> Result<redb::Database, CreateError> {
    if !path.exists() {
        let tmp = creating_path(path);
        // A leftover from a crash during an earlier creation: never used.
        remove_if_present(&tmp)?;
        drop(builder.create(&tmp)?);
        let io = |source| CreateError::Io {
            path: tmp.clone(),
            source,
        };
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| CreateError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
    }
    Ok(builder.create(path)?)
}

fn creating_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".creating");
    path.with_file_name(name)
}

fn remove_if_present(path: &Path) -> Result<(), CreateError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CreateError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Why a database file could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Redb(#[from] redb::DatabaseError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

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
