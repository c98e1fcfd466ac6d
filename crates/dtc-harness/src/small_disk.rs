//! A size-limited tmpfs mounted for one test, for the disk-full tests that
//! need a filesystem that really fills (a reserve larger than any disk only
//! stands in for one). Mounting needs root: [`SmallDisk::mount`] returns
//! `None`, printing that the test is skipped and why, where it is not.

use std::path::{Path, PathBuf};

/// A tmpfs of a given size on a directory of its own; unmounted (lazily)
/// when dropped.
pub struct SmallDisk {
    path: PathBuf,
    /// The temporary directory mounted on, if this disk made it.
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for SmallDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmallDisk")
            .field("path", &self.path)
            .finish()
    }
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (`16m`) on a fresh temporary directory.
    pub fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let path = dir.path().to_path_buf();
        SmallDisk::mount_on(path, Some(dir), size)
    }

    /// Mounts a tmpfs of `size` on `path` (created if missing; e.g. a
    /// node's data directory before the node starts).
    pub fn mount_at(path: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).ok()?;
        SmallDisk::mount_on(path.to_path_buf(), None, size)
    }

    fn mount_on(path: PathBuf, dir: Option<tempfile::TempDir>, size: &str) -> Option<SmallDisk> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk { path, _dir: dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a {size} tmpfs (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A directory on the disk (created).
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(&p).expect("a directory on the small disk");
        p
    }

    pub fn free(&self) -> u64 {
        dtc_util::disk::free_bytes(self.path()).unwrap_or(0)
    }

    /// Writes a ballast file until at most `left` bytes are free (all of
    /// it, to ENOSPC, with `left` = 0).
    pub fn fill_until(&self, left: u64) {
        use std::io::Write;
        let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join("ballast"))
        else {
            return;
        };
        let chunk = vec![0xa5u8; 64 * 1024];
        while self.free() > left {
            let n = (self.free() - left).min(chunk.len() as u64) as usize;
            if f.write_all(&chunk[..n.max(1)]).is_err() {
                break; // full
            }
            let _ = f.sync_all();
        }
    }

    /// Deletes the ballast: the space comes back.
    pub fn free_the_ballast(&self) {
        let _ = std::fs::remove_file(self.path().join("ballast"));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}
