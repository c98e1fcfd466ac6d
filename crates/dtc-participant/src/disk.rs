//! The disk reserve: while the filesystem holding the participant's file has
//! less free space than the reserve, new prepares vote abort without running
//! the resource.
//!
//! Why: a prepared transaction's decision must always be writable. Once a
//! write fails for lack of space, redb refuses every later operation on the
//! open file ("previous I/O error"), so a participant that let prepares fill
//! its disk could no longer record the commits of transactions it had
//! already prepared: they would stay in doubt, their credits missing, until
//! someone freed space and restarted it. With a reserve the prepares stop
//! first (the coordinator aborts those transactions, naming the disk), the
//! decisions of prepared ones still find room, and prepares are accepted
//! again as soon as space returns, without a restart.

use std::path::PathBuf;
use tracing::warn;

/// The default reserve of `dtc participant` (`--disk-reserve-mb`).
pub const DEFAULT_DISK_RESERVE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub(crate) struct DiskReserve {
    pub dir: PathBuf,
    pub bytes: u64,
}

impl DiskReserve {
    /// Why a new prepare must vote abort now, or `None` while the reserve is
    /// free. A filesystem that cannot be asked refuses nothing (said once in
    /// the log by the caller's first failure, not here: this runs per prepare).
    pub(crate) fn refusal(&self) -> Option<String> {
        let free = match free_bytes(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                warn!(dir = %self.dir.display(), error = %e, "cannot read the free disk space");
                return None;
            }
        };
        (free < self.bytes).then(|| {
            format!(
                "disk nearly full: {} free on the filesystem of {}, below the {} kept for \
                 decisions of prepared transactions",
                mib(free),
                self.dir.display(),
                mib(self.bytes)
            )
        })
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Bytes an unprivileged process may still write on `dir`'s filesystem.
// The field types differ between platforms (u32 on some 32-bit ones).
#[allow(clippy::useless_conversion)]
pub(crate) fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_the_disk_refuses_and_a_zero_reserve_never_does() {
        let dir = tempfile::tempdir().unwrap();
        let all = DiskReserve {
            dir: dir.path().into(),
            bytes: u64::MAX,
        };
        let why = all
            .refusal()
            .expect("no filesystem has u64::MAX bytes free");
        assert!(
            why.contains("disk nearly full") && why.contains(&dir.path().display().to_string()),
            "{why}"
        );
        let none = DiskReserve {
            dir: dir.path().into(),
            bytes: 0,
        };
        assert_eq!(none.refusal(), None);
    }
}
