//! Free space on a data directory's filesystem, and the reserve a node
//! keeps there.
//!
//! A node that lets new work fill its disk can no longer write what it owes
//! the work it already accepted (a participant's commits, a coordinator's
//! decisions), and redb refuses an open file for good once a write failed.
//! So both node kinds refuse *new* work while less than a reserve is free,
//! with a message naming the directory, and accept it again by themselves
//! once space returns.

use std::path::{Path, PathBuf};

/// The reserve both node kinds keep by default (`--disk-reserve-mb`).
pub const DEFAULT_RESERVE_BYTES: u64 = 64 * 1024 * 1024;

/// Bytes an unprivileged process may still write on `dir`'s filesystem.
// The field types differ between platforms (u32 on some 32-bit ones).
#[allow(clippy::useless_conversion)]
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size())))
}

/// `bytes` kept free on the filesystem of `dir`, for `kept_for` (words for
/// the refusal message: "decisions of prepared transactions").
#[derive(Debug, Clone)]
pub struct Reserve {
    pub dir: PathBuf,
    pub bytes: u64,
    pub kept_for: &'static str,
}

impl Reserve {
    /// Why new work must be refused now, or `None` while the reserve is
    /// free. A filesystem that cannot be asked refuses nothing (the write
    /// itself will say what is wrong).
    pub fn refusal(&self) -> Option<String> {
        let free = free_bytes(&self.dir).ok()?;
        (free < self.bytes).then(|| {
            format!(
                "disk nearly full: {} free on the filesystem of {}, below the {} kept for {}",
                mib(free),
                self.dir.display(),
                mib(self.bytes),
                self.kept_for
            )
        })
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_the_disk_refuses_naming_it_and_a_zero_reserve_never_does() {
        let dir = tempfile::tempdir().unwrap();
        let all = Reserve {
            dir: dir.path().into(),
            bytes: u64::MAX,
            kept_for: "tests",
        };
        let why = all
            .refusal()
            .expect("no filesystem has u64::MAX bytes free");
        assert!(
            why.contains("disk nearly full") && why.contains(&dir.path().display().to_string()),
            "{why}"
        );
        let none = Reserve { bytes: 0, ..all };
        assert_eq!(none.refusal(), None);
    }
}
