//! Files that appear whole or not at all.
//!
//! A crash while a file is being written can leave it half made; for a redb
//! database that means a file every later open refuses ("magic number
//! mismatch"), for a small JSON file a truncated one. Both are made under a
//! temporary name next to the target, synced, renamed into place, and the
//! directory synced: the real path either does not exist or is complete.

use std::path::{Path, PathBuf};

/// Why [`create_atomically`] failed: the caller's `fill` failed, or a file
/// operation on `path` did.
#[derive(Debug)]
pub enum AtomicError<E> {
    Fill(E),
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl<E: std::fmt::Display> std::fmt::Display for AtomicError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AtomicError::Fill(e) => e.fmt(f),
            AtomicError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for AtomicError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AtomicError::Fill(e) => Some(e),
            AtomicError::Io { source, .. } => Some(source),
        }
    }
}

/// The temporary name `create_atomically` fills: `<name>.creating`.
pub fn creating_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".creating");
    path.with_file_name(name)
}

/// Creates `path` through `fill`, which must write the whole file at the
/// temporary path it is given (closing it before returning). A leftover
/// temporary file from an earlier crash is removed first. Nothing is done if
/// `path` already exists.
pub fn create_atomically<E>(
    path: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), AtomicError<E>> {
    if path.exists() {
        return Ok(());
    }
    let tmp = creating_path(path);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AtomicError::Io { path, source }
    };
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&tmp)(e)),
        _ => {}
    }
    fill(&tmp).map_err(AtomicError::Fill)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(&tmp))?;
    sync_dir_of(path).map_err(io(path))
}

/// Syncs the directory holding `path`, so that a rename or creation in it
/// survives a crash.
pub fn sync_dir_of(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir).and_then(|d| d.sync_all()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leftover_temporary_file_is_replaced_and_the_target_appears_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        std::fs::write(creating_path(&path), b"half a fi").unwrap();
        create_atomically(&path, |tmp| std::fs::write(tmp, b"{\"whole\":true}")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"whole\":true}");
        assert!(!creating_path(&path).exists());
    }

    #[test]
    fn a_failing_fill_leaves_no_target_and_an_existing_target_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let err = create_atomically(&path, |_| Err::<(), _>("no space")).unwrap_err();
        assert!(matches!(err, AtomicError::Fill("no space")));
        assert!(!path.exists());
        std::fs::write(&path, b"old").unwrap();
        create_atomically(&path, |tmp| std::fs::write(tmp, b"new")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }
}
