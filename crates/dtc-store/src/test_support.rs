//! Crash simulation for redb files (feature `test-support`; tests only).
//!
//! [`SimDisk`] is a [`redb::StorageBackend`] that keeps the file in memory and
//! records every write, `set_len` and `sync_data` it receives, each stamped
//! with a ticket from an [`OpClock`] (one clock can be shared by several
//! disks, so "a crash at clock `k`" means the same instant for all of them).
//! From the recorded [`Trace`], a [`Replayer`] rebuilds the file a crash at
//! any instant would leave behind, under a [`CrashMode`]:
//!
//! - [`CrashMode::SyncedOnly`]: power loss with the worst luck: only what a
//!   completed `sync_data` made durable is there.
//! - [`CrashMode::AllWritten`]: the process dies but the OS survives: every
//!   write that reached the backend is there, synced or not.
//! - [`CrashMode::Torn`]: power loss with the OS flushing dirty pages in any
//!   order: each 4 KiB block written since the last sync independently holds
//!   its durable contents or the contents after any one of the writes to it,
//!   and the file length is any length it had since the last sync. Seeded.
//!
//! The same idea as redb's own `tests/crash_consistency.rs`, generalised from
//! one frozen sync to every instant and to torn, reordered writes.

use redb::StorageBackend;
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Granularity at which unsynced writes reach the disk independently in
/// [`CrashMode::Torn`] (the page-cache page size).
pub const BLOCK: usize = 4096;

/// A shared counter that stamps every disk operation: operation `t` happened
/// before a crash at clock `k` iff `t < k`.
#[derive(Debug, Clone, Default)]
pub struct OpClock(Arc<AtomicU64>);

impl OpClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// The clock now: a crash at this value keeps every operation so far.
    /// Read it right after a call returns to timestamp its acknowledgement.
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    fn tick(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst)
    }
}

/// One recorded disk operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
    Sync,
}

#[derive(Debug, Default)]
struct DiskState {
    /// The file as the process sees it.
    live: Vec<u8>,
    /// The file when recording started (compacting: at the last sync).
    base: Vec<u8>,
    ops: Vec<(u64, DiskOp)>,
    /// Fold every sync into `base` (see [`SimDisk::compacting`]).
    compact: bool,
    /// An injected failure (see [`SimDisk::set_fault`]).
    fault: Option<DiskFault>,
}

/// A failure a [`SimDisk`] can be told to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    /// The filesystem is full: a write past the end of the file, or a
    /// `set_len` that grows it, fails with `StorageFull` (ENOSPC) and
    /// changes nothing. Writes inside the file still land.
    Full,
    /// Every `sync_data` fails with an I/O error (EIO): what was written
    /// since the last good sync may or may not be on disk.
    SyncFails,
}

/// An in-memory redb backend that records what it is asked to write and
/// sync. Clones share the same file.
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
    clock: OpClock,
}

impl SimDisk {
    /// An empty file.
    pub fn new(clock: &OpClock) -> Self {
        Self::from_image(Vec::new(), clock)
    }

    /// A file that starts with `image` (durable), e.g. what a crash left.
    pub fn from_image(image: Vec<u8>, clock: &OpClock) -> Self {
        SimDisk {
            state: Arc::new(Mutex::new(DiskState {
                live: image.clone(),
                base: image,
                ops: Vec::new(),
                compact: false,
                fault: None,
            })),
            clock: clock.clone(),
        }
    }

    /// A file that starts with `image` and keeps only what the last sync
    /// left durable plus the operations since: memory stays bounded by the
    /// file however long it runs, and [`SimDisk::crash_image`] stays cheap.
    /// The trace then starts at the last sync (for long simulations, where
    /// only a crash "now" is asked for).
    pub fn compacting(image: Vec<u8>, clock: &OpClock) -> Self {
        let disk = Self::from_image(image, clock);
        disk.lock().compact = true;
        disk
    }

    /// From now on, fail as `fault` says (`None`: work again).
    pub fn set_fault(&self, fault: Option<DiskFault>) {
        self.lock().fault = fault;
    }

    fn refuse(&self, grows: impl FnOnce(usize) -> bool, sync: bool) -> io::Result<()> {
        let s = self.lock();
        match s.fault {
            Some(DiskFault::Full) if !sync && grows(s.live.len()) => Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (simulated)",
            )),
            Some(DiskFault::SyncFails) if sync => {
                Err(io::Error::other("input/output error on fsync (simulated)"))
            }
            _ => Ok(()),
        }
    }

    /// The file a crash now leaves under `mode`.
    pub fn crash_image(&self, mode: CrashMode) -> Vec<u8> {
        self.trace().crash_image(u64::MAX, mode)
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of everything recorded so far.
    pub fn trace(&self) -> Trace {
        let s = self.lock();
        Trace {
            base: s.base.clone(),
            ops: s.ops.clone(),
        }
    }

    /// Clock values of the recorded syncs.
    pub fn sync_clocks(&self) -> Vec<u64> {
        self.lock()
            .ops
            .iter()
            .filter(|(_, op)| *op == DiskOp::Sync)
            .map(|(t, _)| *t)
            .collect()
    }

    fn record(&self, op: DiskOp) {
        let mut s = self.lock();
        // Ticket taken under the lock: the order of `ops` is the clock order.
        let t = self.clock.tick();
        match &op {
            DiskOp::Write { offset, data } => write_at(&mut s.live, *offset as usize, data),
            DiskOp::SetLen(len) => s.live.resize(*len as usize, 0),
            DiskOp::Sync => {
                if s.compact {
                    let DiskState { base, ops, .. } = &mut *s;
                    for (_, op) in ops.drain(..) {
                        apply_op(base, &op);
                    }
                    return;
                }
            }
        }
        s.ops.push((t, op));
    }
}

fn write_at(file: &mut Vec<u8>, offset: usize, data: &[u8]) {
    let end = offset + data.len();
    if file.len() < end {
        file.resize(end, 0);
    }
    file[offset..end].copy_from_slice(data);
}

fn to_usize(v: u64) -> io::Result<usize> {
    usize::try_from(v).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

impl StorageBackend for SimDisk {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let s = self.lock();
        let offset = to_usize(offset)?;
        let src = s
            .live
            .get(offset..offset + out.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        to_usize(len)?;
        self.refuse(|now| len as usize > now, false)?;
        self.record(DiskOp::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.refuse(|_| false, true)?;
        self.record(DiskOp::Sync);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        to_usize(offset)?;
        self.refuse(|now| offset as usize + data.len() > now, false)?;
        self.record(DiskOp::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }
}

/// What survives a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Only what the last completed sync made durable.
    SyncedOnly,
    /// Every write issued before the crash (a process crash; the OS survives).
    AllWritten,
    /// Durable state plus, per 4 KiB block, any one of the states the block
    /// went through since the last sync; the length likewise. Seeded.
    Torn { seed: u64 },
}

/// The operations recorded by one [`SimDisk`].
#[derive(Debug, Clone)]
pub struct Trace {
    base: Vec<u8>,
    ops: Vec<(u64, DiskOp)>,
}

impl Trace {
    pub fn ops(&self) -> &[(u64, DiskOp)] {
        &self.ops
    }

    /// Clock values of the syncs.
    pub fn sync_clocks(&self) -> Vec<u64> {
        self.ops
            .iter()
            .filter(|(_, op)| *op == DiskOp::Sync)
            .map(|(t, _)| *t)
            .collect()
    }

    /// Walks the trace forwards, producing crash images at increasing clocks.
    pub fn replayer(&self) -> Replayer<'_> {
        Replayer {
            trace: self,
            next: 0,
            live: self.base.clone(),
            durable: self.base.clone(),
            pending: Vec::new(),
        }
    }

    /// The file a crash at `clock` leaves under `mode`.
    pub fn crash_image(&self, clock: u64, mode: CrashMode) -> Vec<u8> {
        let mut r = self.replayer();
        r.advance_to(clock);
        r.image(mode)
    }
}

/// Incremental replay of a [`Trace`]: cheap for many crash points in order.
#[derive(Debug)]
pub struct Replayer<'a> {
    trace: &'a Trace,
    next: usize,
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Indexes (into the trace) of the operations since the last sync.
    pending: Vec<usize>,
}

fn apply_op(file: &mut Vec<u8>, op: &DiskOp) {
    match op {
        DiskOp::Write { offset, data } => write_at(file, *offset as usize, data),
        DiskOp::SetLen(len) => file.resize(*len as usize, 0),
        DiskOp::Sync => {}
    }
}

impl Replayer<'_> {
    /// Applies every operation stamped before `clock`. Clocks must not
    /// decrease from one call to the next.
    pub fn advance_to(&mut self, clock: u64) {
        while let Some((t, op)) = self.trace.ops.get(self.next) {
            if *t >= clock {
                break;
            }
            apply_op(&mut self.live, op);
            if *op == DiskOp::Sync {
                for &i in &self.pending {
                    apply_op(&mut self.durable, &self.trace.ops[i].1);
                }
                self.pending.clear();
            } else {
                self.pending.push(self.next);
            }
            self.next += 1;
        }
    }

    /// Number of writes and length changes not yet synced at this point.
    pub fn unsynced(&self) -> usize {
        self.pending.len()
    }

    /// The crash image at the current point.
    pub fn image(&self, mode: CrashMode) -> Vec<u8> {
        match mode {
            CrashMode::SyncedOnly => self.durable.clone(),
            CrashMode::AllWritten => self.live.clone(),
            CrashMode::Torn { seed } => self.torn(seed),
        }
    }

    fn torn(&self, seed: u64) -> Vec<u8> {
        let mut rng = Rng::new(seed ^ (self.next as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        // Every state each touched block went through, and every length.
        let mut work = self.durable.clone();
        let mut lens = vec![work.len()];
        let mut versions: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
        for &i in &self.pending {
            let op = &self.trace.ops[i].1;
            let before = work.len();
            apply_op(&mut work, op);
            let touched = match op {
                DiskOp::Write { offset, data } => {
                    let o = *offset as usize;
                    o / BLOCK..(o + data.len()).div_ceil(BLOCK)
                }
                DiskOp::SetLen(_) => {
                    let (lo, hi) = (before.min(work.len()), before.max(work.len()));
                    lo / BLOCK..hi.div_ceil(BLOCK)
                }
                DiskOp::Sync => 0..0,
            };
            for b in touched {
                versions.entry(b).or_default().push(block_of(&work, b));
            }
            lens.push(work.len());
        }
        let len = lens[rng.below(lens.len())];
        let mut image = self.durable.clone();
        image.resize(len, 0);
        for (b, vs) in versions {
            let pick = rng.below(vs.len() + 1);
            if pick == 0 {
                continue; // the block kept its durable contents
            }
            let start = b * BLOCK;
            if start >= len {
                continue;
            }
            let end = (start + BLOCK).min(len);
            image[start..end].copy_from_slice(&vs[pick - 1][..end - start]);
        }
        image
    }
}

/// Block `b` of `file`, zero-padded to [`BLOCK`] bytes.
fn block_of(file: &[u8], b: usize) -> Vec<u8> {
    let mut out = vec![0u8; BLOCK];
    let start = b * BLOCK;
    if start < file.len() {
        let end = (start + BLOCK).min(file.len());
        out[..end - start].copy_from_slice(&file[start..end]);
    }
    out
}

/// A seeded random-number generator for crash tests, reproducible from a
/// printed seed: `fastrand`'s generator under the few names the crash tests
/// of this crate and of `dtc-participant` draw with. Not bit-compatible with
/// the SplitMix generator it replaced; no test depends on particular draws
/// (the seeds only pick which schedules run; every run checks invariants).
#[derive(Debug, Clone)]
pub struct Rng(fastrand::Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(fastrand::Rng::with_seed(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.u64(..)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.usize(..n)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0.u64(lo..=hi)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.0.u64(..den) < num
    }
}

/// The whole content of a snapshot file, read from its start.
pub async fn snapshot_bytes(file: &mut crate::SnapshotFile) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    file.seek(io::SeekFrom::Start(0))
        .await
        .expect("seek a snapshot file");
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .await
        .expect("read a snapshot file");
    bytes
}

/// Receives `bytes` as a snapshot the way openraft's follower does (into the
/// state machine's receiving file, then shut down), ready for
/// `install_snapshot`.
pub async fn receive_snapshot(
    sm: &mut crate::StateMachineStore,
    bytes: &[u8],
) -> Box<crate::SnapshotFile> {
    use openraft::storage::RaftStateMachine;
    use tokio::io::AsyncWriteExt;
    let mut rx = sm
        .begin_receiving_snapshot()
        .await
        .expect("begin receiving a snapshot");
    rx.write_all(bytes).await.expect("write a received chunk");
    rx.shutdown().await.expect("finish a received snapshot");
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_refuses_to_grow_but_takes_writes_inside_the_file() {
        let clock = OpClock::new();
        let d = SimDisk::compacting(vec![0; 8], &clock);
        d.set_fault(Some(DiskFault::Full));
        assert_eq!(
            d.write(6, &[1, 2, 3]).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        assert_eq!(
            d.set_len(16).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        d.write(0, &[7; 8]).unwrap();
        d.set_len(4).unwrap();
        d.sync_data().unwrap();
        assert_eq!(d.crash_image(CrashMode::SyncedOnly), vec![7; 4]);
        d.set_fault(None);
        d.set_len(16).unwrap();
    }

    #[test]
    fn a_failed_sync_makes_nothing_durable() {
        let clock = OpClock::new();
        let d = SimDisk::compacting(vec![1; 4], &clock);
        d.write(0, &[9; 4]).unwrap();
        d.set_fault(Some(DiskFault::SyncFails));
        assert!(d.sync_data().is_err());
        assert_eq!(d.crash_image(CrashMode::SyncedOnly), vec![1; 4]);
        assert_eq!(d.crash_image(CrashMode::AllWritten), vec![9; 4]);
        d.set_fault(None);
        d.sync_data().unwrap();
        assert_eq!(d.crash_image(CrashMode::SyncedOnly), vec![9; 4]);
    }

    fn disk_with_ops() -> (SimDisk, OpClock) {
        let clock = OpClock::new();
        let d = SimDisk::new(&clock);
        d.set_len(2 * BLOCK as u64).unwrap(); // t0
        d.write(0, &[1; 10]).unwrap(); // t1
        d.sync_data().unwrap(); // t2
        d.write(0, &[2; 10]).unwrap(); // t3
        d.write(BLOCK as u64, &[3; 10]).unwrap(); // t4
        d.set_len(3 * BLOCK as u64).unwrap(); // t5
        (d, clock)
    }

    #[test]
    fn synced_only_image_holds_exactly_the_writes_before_the_last_sync() {
        let (d, clock) = disk_with_ops();
        let t = d.trace();
        assert_eq!(clock.now(), 6);
        assert_eq!(t.sync_clocks(), vec![2]);
        assert!(t.crash_image(2, CrashMode::SyncedOnly).is_empty());
        let img = t.crash_image(3, CrashMode::SyncedOnly);
        assert_eq!(img.len(), 2 * BLOCK);
        assert_eq!(&img[..10], &[1; 10]);
        assert_eq!(t.crash_image(6, CrashMode::SyncedOnly), img);
        let all = t.crash_image(6, CrashMode::AllWritten);
        assert_eq!(all.len(), 3 * BLOCK);
        assert_eq!(&all[..10], &[2; 10]);
        assert_eq!(&all[BLOCK..BLOCK + 10], &[3; 10]);
    }

    #[test]
    fn torn_images_mix_old_and_new_blocks_and_lengths() {
        let (d, _) = disk_with_ops();
        let t = d.trace();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let img = t.crash_image(6, CrashMode::Torn { seed });
            seen.insert((img.len(), img[0], img[BLOCK]));
        }
        // Both lengths, and each block old or new independently.
        for want in [
            (2 * BLOCK, 1, 0),
            (2 * BLOCK, 2, 3),
            (3 * BLOCK, 1, 3),
            (3 * BLOCK, 2, 0),
        ] {
            assert!(seen.contains(&want), "{want:?} not in {seen:?}");
        }
    }
}
