//! The simulated disks of every host, kept outside the hosts so that they
//! outlive a crash: a crashed host's files become what a crash leaves
//! ([`SimDisk::crash_image`]: only what was synced, or torn pages), and the
//! restarted host opens those. A host's disks can also be made to fail
//! (full, or failing every fsync); a node that stops on such a failure is
//! expected to, and the simulation restarts it once the disk works again.

use dtc_store::test_support::{CrashMode, DiskFault, OpClock, SimDisk};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Every host's files by (host, file name).
#[derive(Debug, Clone, Default)]
pub struct Disks {
    files: Arc<Mutex<BTreeMap<(String, &'static str), SimDisk>>>,
    clock: OpClock,
    /// Sabotage: a crash loses everything since the host started.
    lying: bool,
    /// Hosts whose disks failed since they last started, and how: such a
    /// host may stop with a storage error, as it should.
    failed: Arc<Mutex<BTreeMap<String, DiskFault>>>,
}

impl Disks {
    /// `lying`: every crash keeps only what the disk held when the host
    /// last started, synced or not (a disk that lies about fsync).
    pub fn new(lying: bool) -> Disks {
        Disks {
            lying,
            ..Disks::default()
        }
    }

    fn new_disk(&self, image: Vec<u8>) -> SimDisk {
        if self.lying {
            // The whole trace is kept: its base is the start of this life.
            SimDisk::from_image(image, &self.clock)
        } else {
            SimDisk::compacting(image, &self.clock)
        }
    }

    /// The current disk of `host`'s `file` (a new empty one the first time).
    pub fn get(&self, host: &str, file: &'static str) -> SimDisk {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files
            .entry((host.to_string(), file))
            .or_insert_with(|| self.new_disk(Vec::new()))
            .clone()
    }

    /// Makes every file of `host` fail as `fault` says, or work again.
    pub fn set_fault(&self, host: &str, fault: Option<DiskFault>) {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        for ((h, _), disk) in files.iter() {
            if h == host {
                disk.set_fault(fault);
            }
        }
        if let Some(f) = fault {
            self.failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(host.to_string(), f);
        }
    }

    /// How `host`'s disks failed since it last started, if they did.
    pub fn failed(&self, host: &str) -> Option<DiskFault> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .copied()
    }

    /// `host` starts again: after a failed fsync its files keep only what
    /// was synced (the pages of the failed sync may be gone); after a full
    /// disk, everything written (the process stopped, the OS did not).
    pub fn restarting(&self, host: &str) {
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(host);
        if failed == Some(DiskFault::SyncFails) {
            self.crash(host, CrashMode::SyncedOnly);
        }
    }

    /// Every file of `host` becomes what a crash now leaves under `mode`.
    /// The old disks (still held by the crashed incarnation until its
    /// runtime is dropped) are cut off: what it writes from now on is lost.
    pub fn crash(&self, host: &str, mode: CrashMode) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        for ((h, _), disk) in files.iter_mut() {
            if h == host {
                let image = if self.lying {
                    // Before any operation of this life: its starting image.
                    disk.trace().crash_image(0, CrashMode::SyncedOnly)
                } else {
                    disk.crash_image(mode)
                };
                *disk = self.new_disk(image);
            }
        }
    }
}
