//! Snapshot files: the state machine streamed to a file of its own.
//!
//! A snapshot holds every completed transaction of the retention window, so
//! it grows with history. It is therefore never held in memory whole: a build
//! streams the tables of one redb read transaction (a consistent cut, which
//! never blocks applies) row by row into `<dir>/snapshots/<name>.partial`,
//! syncs it and renames it into place; only then does a synced state-machine
//! commit make it current. A follower receives the chunks openraft sends
//! into a `.partial` file and installs it by streaming it back into the
//! tables. Keeping it out of `state.redb` also keeps that file half as big,
//! and a crashed redb file is walked in full when it is next opened.
//!
//! File layout: the magic bytes, then frames of `u32` little-endian length
//! plus postcard bytes: one [`Header`], the [`Item`]s, and a closing
//! [`Item::End`] that counts them, so a truncated file is refused.
//!
//! Crash safety: the current snapshot's file name is recorded in `state.redb`
//! by the same synced commit that makes it current, after the file and its
//! directory entry are synced, so a committed name always names a complete
//! file. Any other file in the directory (a build or a transfer a crash
//! interrupted, a snapshot replaced by a newer one) is removed at open.

use crate::{LogId, StoreError, StoredMembership};
use serde::{Deserialize, Serialize};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

const MAGIC: &[u8; 8] = b"dtcsnap1";
/// Buffer of the streaming writer and reader: big enough that the syscalls
/// are few, small enough that memory does not depend on the state's size.
const IO_BUFFER_BYTES: usize = 1 << 20;
/// A frame larger than this is corruption, not data (a record is small).
const MAX_FRAME_BYTES: u32 = 64 << 20;
const PARTIAL: &str = "partial";
const FINAL: &str = "snap";

/// What precedes the rows: the applied position the rows are a cut at.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Header {
    pub format: u32,
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
}

/// One row of a state table. Transaction records travel as their stored
/// postcard bytes, so a build copies rows without decoding them.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Item<'a> {
    Txn { id: &'a str, record: &'a [u8] },
    Pending(&'a str),
    Completed(u64, &'a str),
    Participant(&'a str, &'a str),
    End { items: u64 },
}

/// openraft's `SnapshotData`: an open snapshot file and its path (install
/// needs the path to rename a received file into place).
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
    file: tokio::fs::File,
}

impl SnapshotFile {
    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(path: PathBuf) -> Result<Self, StoreError> {
        let file = std::fs::File::open(&path).map_err(|source| io_err(&path, source))?;
        Ok(SnapshotFile {
            path,
            file: tokio::fs::File::from_std(file),
        })
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: std::io::SeekFrom) -> std::io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The directory that holds a node's snapshot files.
#[derive(Debug)]
pub(crate) struct SnapshotDir {
    dir: PathBuf,
    /// Makes names unique within this process; the time makes them unique
    /// across restarts.
    counter: AtomicU64,
    /// Crash tests reopen copies of this directory as it was at earlier
    /// points, so they keep every sealed file (see `keep_replaced`).
    keep_replaced: AtomicBool,
}

impl SnapshotDir {
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        Ok(SnapshotDir {
            dir: dir.to_path_buf(),
            counter: AtomicU64::new(0),
            keep_replaced: AtomicBool::new(false),
        })
    }

    /// Stops removing sealed files once they are replaced (tests only).
    #[cfg(feature = "test-support")]
    pub(crate) fn keep_replaced(&self) {
        self.keep_replaced.store(true, Ordering::Relaxed);
    }

    /// A fresh `.partial` path to write a snapshot into.
    pub(crate) fn new_partial(&self, kind: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{kind}-{nanos}-{n}.{PARTIAL}"))
    }

    /// A new, empty, writable `.partial` file for a snapshot being received.
    pub(crate) fn create_receiving(&self) -> Result<SnapshotFile, StoreError> {
        let path = self.new_partial("received");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        Ok(SnapshotFile {
            path,
            file: tokio::fs::File::from_std(file),
        })
    }

    /// Syncs a complete `.partial` file and renames it into place; returns
    /// the final file's name (what `state.redb` records).
    pub(crate) fn seal(&self, partial: &Path) -> Result<String, StoreError> {
        std::fs::File::open(partial)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_err(partial, e))?;
        // Into this directory whatever the partial's, so the recorded name
        // resolves here.
        let sealed = match partial.file_name() {
            Some(n) => self.dir.join(n).with_extension(FINAL),
            None => {
                return Err(StoreError::Inconsistent(format!(
                    "bad snapshot path {partial:?}"
                )));
            }
        };
        std::fs::rename(partial, &sealed).map_err(|e| io_err(partial, e))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(&self.dir, e))?;
        sealed
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| StoreError::Inconsistent(format!("bad snapshot path {sealed:?}")))
    }

    /// Opens a sealed snapshot by the name `state.redb` recorded.
    pub(crate) fn open_sealed(&self, name: &str) -> Result<SnapshotFile, StoreError> {
        SnapshotFile::open(self.dir.join(name))
    }

    /// Removes a sealed file that is no longer current; a missing one is fine.
    pub(crate) fn remove(&self, name: &str) {
        if !self.keep_replaced.load(Ordering::Relaxed) {
            self.remove_path(&self.dir.join(name));
        }
    }

    /// [`SnapshotDir::remove`] by path.
    pub(crate) fn remove_path(&self, path: &Path) {
        if let Err(e) = std::fs::remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an old snapshot file");
        }
    }

    /// Removes every snapshot file but `keep`: leftovers of interrupted
    /// builds and transfers, and snapshots replaced before a crash let us
    /// remove them. Only files this module names are touched.
    pub(crate) fn remove_all_but(&self, keep: Option<&str>) -> Result<(), StoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let ours =
                name.ends_with(&format!(".{PARTIAL}")) || name.ends_with(&format!(".{FINAL}"));
            if ours && Some(name) != keep {
                self.remove_path(&self.dir.join(name));
            }
        }
        Ok(())
    }
}

/// Streams a snapshot into a file: the header, then rows, then the end.
pub(crate) struct Writer {
    path: PathBuf,
    out: BufWriter<std::fs::File>,
    items: u64,
    frame: Vec<u8>,
}

impl Writer {
    pub(crate) fn create(path: PathBuf, header: &Header) -> Result<Self, StoreError> {
        let file = std::fs::File::create(&path).map_err(|e| io_err(&path, e))?;
        let mut w = Writer {
            out: BufWriter::with_capacity(IO_BUFFER_BYTES, file),
            path,
            items: 0,
            frame: Vec::new(),
        };
        w.out.write_all(MAGIC).map_err(|e| io_err(&w.path, e))?;
        w.frame(header)?;
        Ok(w)
    }

    fn frame<T: Serialize>(&mut self, value: &T) -> Result<(), StoreError> {
        self.frame.clear();
        let bytes =
            postcard::to_extend(value, std::mem::take(&mut self.frame)).map_err(|source| {
                StoreError::Encode {
                    what: "snapshot item",
                    source,
                }
            })?;
        self.frame = bytes;
        let len = u32::try_from(self.frame.len())
            .ok()
            .filter(|l| *l <= MAX_FRAME_BYTES)
            .ok_or_else(|| {
                StoreError::Inconsistent(format!(
                    "a snapshot item of {} bytes is too large",
                    self.frame.len()
                ))
            })?;
        let io = |e| io_err(&self.path, e);
        self.out.write_all(&len.to_le_bytes()).map_err(io)?;
        self.out.write_all(&self.frame).map_err(io)?;
        Ok(())
    }

    pub(crate) fn item(&mut self, item: &Item<'_>) -> Result<(), StoreError> {
        self.frame(item)?;
        self.items += 1;
        Ok(())
    }

    /// Writes the closing count and flushes; the caller seals the file.
    pub(crate) fn finish(mut self) -> Result<PathBuf, StoreError> {
        let end = Item::End { items: self.items };
        self.frame(&end)?;
        self.out.flush().map_err(|e| io_err(&self.path, e))?;
        Ok(self.path)
    }
}

/// Reads a snapshot file back: the header, then items until [`Item::End`].
pub(crate) struct Reader {
    path: PathBuf,
    input: BufReader<std::fs::File>,
    frame: Vec<u8>,
    items: u64,
    ended: bool,
}

impl Reader {
    pub(crate) fn open(path: &Path) -> Result<(Self, Header), StoreError> {
        let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
        let mut r = Reader {
            path: path.to_path_buf(),
            input: BufReader::with_capacity(IO_BUFFER_BYTES, file),
            frame: Vec::new(),
            items: 0,
            ended: false,
        };
        let mut magic = [0u8; 8];
        r.input
            .read_exact(&mut magic)
            .map_err(|e| r.corrupt(format!("no header ({e})")))?;
        if &magic != MAGIC {
            return Err(r.corrupt("not a dtc snapshot file".into()));
        }
        r.next_frame()?;
        let header = postcard::from_bytes(&r.frame).map_err(|e| r.corrupt(e.to_string()))?;
        Ok((r, header))
    }

    fn corrupt(&self, why: String) -> StoreError {
        StoreError::Inconsistent(format!("snapshot file {}: {why}", self.path.display()))
    }

    fn next_frame(&mut self) -> Result<(), StoreError> {
        let mut len = [0u8; 4];
        self.input
            .read_exact(&mut len)
            .map_err(|e| self.corrupt(format!("truncated ({e})")))?;
        let len = u32::from_le_bytes(len);
        if len > MAX_FRAME_BYTES {
            return Err(self.corrupt(format!("a frame claims {len} bytes")));
        }
        self.frame.resize(len as usize, 0);
        self.input
            .read_exact(&mut self.frame)
            .map_err(|e| self.corrupt(format!("truncated ({e})")))?;
        Ok(())
    }

    /// The next row, or `None` after the end, which must close the file and
    /// count every row before it.
    pub(crate) fn next_item(&mut self) -> Result<Option<Item<'_>>, StoreError> {
        if self.ended {
            return Ok(None);
        }
        self.next_frame()?;
        // Disjoint borrows: the item borrows the frame while the count moves.
        let Reader {
            path,
            input,
            frame,
            items,
            ended,
        } = self;
        let corrupt = |why: String| {
            StoreError::Inconsistent(format!("snapshot file {}: {why}", path.display()))
        };
        let item: Item<'_> = postcard::from_bytes(frame).map_err(|e| corrupt(e.to_string()))?;
        if let Item::End { items: counted } = item {
            if counted != *items {
                return Err(corrupt(format!("ends after {counted} rows, {items} read")));
            }
            let mut rest = [0u8; 1];
            match input.read(&mut rest) {
                Ok(0) => {}
                Ok(_) => return Err(corrupt("bytes after the end".into())),
                Err(e) => return Err(io_err(path, e)),
            }
            *ended = true;
            return Ok(None);
        }
        *items += 1;
        Ok(Some(item))
    }
}
