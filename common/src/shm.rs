//! Named POSIX shared-memory regions (`shm_open` + `memmap2::MmapRaw`).
//!
//! Owns: creating a region exclusively (`0600`), replacing a stale one left by a dead owner,
//! opening a live one, unlinking on drop for the owner, giving pages of an owned range back
//! ([`ShmRegion::remove_pages`]). Every region begins with a
//! [`RegionHeader`] that names its kind, layout version and owner (pid plus start time).
//! Never hands out `&[u8]` over shared bytes: callers get raw pointers or `&T` of types made
//! only of atomics and `UnsafeCell`s ([`ShmSafe`]).

use crate::process::ProcId;
use memmap2::{MmapOptions, MmapRaw};
use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::Mode;
use std::fs::File;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Marker for types that may be referenced inside shared memory written by other processes.
///
/// # Safety
/// Implementors consist only of atomics and `UnsafeCell`s (every bit pattern valid, all
/// mutation through shared references is synchronised or interior), are `repr(C)`, and
/// have an alignment of at most 64.
pub unsafe trait ShmSafe {}

/// The first bytes of every region.
#[repr(C)]
pub struct RegionHeader {
    /// Kind of region; written last by the creator (Release), so a reader that sees it sees the rest.
    pub magic: AtomicU32,
    /// Layout version of that kind.
    pub version: AtomicU32,
    /// Creator's pid.
    pub owner_pid: AtomicU32,
    _pad: AtomicU32,
    /// Creator's start time (clock ticks since boot).
    pub owner_start: AtomicU64,
    /// Total mapped length the creator used.
    pub len: AtomicU64,
}

// SAFETY: only atomics, repr(C), alignment 8.
unsafe impl ShmSafe for RegionHeader {}

impl RegionHeader {
    pub fn owner(&self) -> ProcId {
        ProcId {
            pid: self.owner_pid.load(Ordering::Relaxed),
            start: self.owner_start.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug)]
pub enum ShmError {
    /// A live process of this instance already owns the region.
    InUse {
        name: String,
        pid: u32,
    },
    /// No such region (yet).
    Missing(String),
    /// The region exists but is not (yet) a valid region of the expected kind and version.
    Invalid {
        name: String,
        why: String,
    },
    Os {
        name: String,
        err: std::io::Error,
    },
}

impl std::fmt::Display for ShmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShmError::InUse { name, pid } => write!(f, "{name} is owned by live process {pid}"),
            ShmError::Missing(name) => write!(f, "{name} does not exist"),
            ShmError::Invalid { name, why } => write!(f, "{name}: {why}"),
            ShmError::Os { name, err } => write!(f, "{name}: {err}"),
        }
    }
}

impl std::error::Error for ShmError {}

/// The page size the region's mapping and file are handled in (`remove_pages`, and what the
/// arena hands to `sendfile`): 4 KiB on the targets we build for (x86-64, and aarch64 with
/// 4 KiB pages, Debian's kernel default).
pub const PAGE: usize = 4096;

/// One mapped region. The creator's handle unlinks the name when dropped.
pub struct ShmRegion {
    map: MmapRaw,
    /// The object itself, kept open so its pages can be handed to the kernel by file offset
    /// ([`ShmRegion::fd`]: `sendfile` from the region to a socket).
    file: File,
    name: String,
    owner: bool,
}

impl ShmRegion {
    /// Creates `name` with `len` bytes (zeroed) and fills in the header except `magic`;
    /// the caller initialises its layout, then calls [`ShmRegion::publish`].
    /// A stale region (dead owner, or never published) is unlinked and replaced, with a log
    /// line; a region whose owner lives is left alone and reported as [`ShmError::InUse`].
    pub fn create(name: &str, len: usize, magic: u32, version: u32) -> Result<ShmRegion, ShmError> {
        assert!(len >= size_of::<RegionHeader>());
        let os = |err: nix::Error| ShmError::Os {
            name: name.to_string(),
            err: err.into(),
        };
        let fd = loop {
            match shm_open(
                name,
                OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => break fd,
                Err(nix::Error::EEXIST) => match Self::open(name, magic, version) {
                    Ok(live) if live.header().owner().alive() => {
                        return Err(ShmError::InUse {
                            name: name.to_string(),
                            pid: live.header().owner().pid,
                        })
                    }
                    Ok(_) | Err(ShmError::Invalid { .. }) => {
                        log::warn!("replacing stale {name} left by a dead process");
                        let _ = shm_unlink(name);
                    }
                    Err(ShmError::Missing(_)) => continue,
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(os(e)),
            }
        };
        let file = File::from(fd);
        file.set_len(len as u64).map_err(|err| ShmError::Os {
            name: name.to_string(),
            err,
        })?;
        let region = Self::map(name, file, len, true)?;
        let me = ProcId::current();
        let h = region.header();
        h.version.store(version, Ordering::Relaxed);
        h.owner_pid.store(me.pid, Ordering::Relaxed);
        h.owner_start.store(me.start, Ordering::Relaxed);
        h.len.store(len as u64, Ordering::Relaxed);
        Ok(region)
    }

    fn map(name: &str, file: File, len: usize, owner: bool) -> Result<ShmRegion, ShmError> {
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .map_err(|err| ShmError::Os {
                name: name.to_string(),
                err,
            })?;
        Ok(ShmRegion {
            map,
            file,
            name: name.to_string(),
            owner,
        })
    }

    /// Makes the region visible to openers: stores `magic` with Release.
    pub fn publish(&self, magic: u32) {
        // ORDERING: Release pairs with the Acquire load in `open`: an opener that sees MAGIC
        // sees every field the creator initialised before this store.
        self.header().magic.store(magic, Ordering::Release);
    }

    /// Opens an existing, published region of the given kind and version.
    pub fn open(name: &str, magic: u32, version: u32) -> Result<ShmRegion, ShmError> {
        let invalid = |why: String| ShmError::Invalid {
            name: name.to_string(),
            why,
        };
        let fd = match shm_open(name, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) => return Err(ShmError::Missing(name.to_string())),
            Err(e) => {
                return Err(ShmError::Os {
                    name: name.to_string(),
                    err: e.into(),
                })
            }
        };
        let file = File::from(fd);
        let len = file
            .metadata()
            .map_err(|err| ShmError::Os {
                name: name.to_string(),
                err,
            })?
            .len() as usize;
        if len < size_of::<RegionHeader>() {
            return Err(invalid(format!("too short ({len} bytes)")));
        }
        let region = Self::map(name, file, len, false)?;
        let h = region.header();
        // ORDERING: Acquire pairs with the Release store in `publish`.
        let found = h.magic.load(Ordering::Acquire);
        if found != magic {
            return Err(invalid(format!(
                "bad magic {found:#x}, expected {magic:#x}"
            )));
        }
        let v = h.version.load(Ordering::Relaxed);
        if v != version {
            return Err(invalid(format!("layout version {v}, expected {version}")));
        }
        if h.len.load(Ordering::Relaxed) != len as u64 {
            return Err(invalid("length does not match its header".into()));
        }
        Ok(region)
    }

    /// Like [`ShmRegion::open`], retrying a bounded time while the region is missing or not
    /// yet published.
    pub fn open_wait(
        name: &str,
        magic: u32,
        version: u32,
        limit: Duration,
    ) -> Result<ShmRegion, ShmError> {
        let start = std::time::Instant::now();
        loop {
            match Self::open(name, magic, version) {
                Err(ShmError::Missing(_) | ShmError::Invalid { .. }) if start.elapsed() < limit => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                r => return r,
            }
        }
    }

    pub fn header(&self) -> &RegionHeader {
        self.get(0)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A shared reference to the `T` at `offset`.
    ///
    /// Panics if `T` does not fit inside the mapping at that offset or is misaligned.
    pub fn get<T: ShmSafe>(&self, offset: usize) -> &T {
        assert!(offset
            .checked_add(size_of::<T>())
            .is_some_and(|end| end <= self.map.len()));
        let ptr = self.map.as_mut_ptr().wrapping_add(offset);
        assert_eq!(
            ptr as usize % align_of::<T>(),
            0,
            "misaligned shared-memory field"
        );
        // SAFETY: in bounds and aligned (checked above); the mapping lives as long as `self`;
        // `T: ShmSafe` is made only of atomics/UnsafeCells, valid for any bytes, and every
        // write through the reference is atomic or behind an UnsafeCell, so other processes
        // writing the same bytes cannot break the reference's guarantees.
        unsafe { &*(ptr as *const T) }
    }

    /// Raw pointer to `len` bytes at `offset` (bounds checked). Only for `copy_nonoverlapping`
    /// while a semaphore handoff makes the caller the bytes' owner.
    pub fn bytes_ptr(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(offset
            .checked_add(len)
            .is_some_and(|end| end <= self.map.len()));
        self.map.as_mut_ptr().wrapping_add(offset)
    }

    /// Gives the pages behind `len` bytes at `offset` back to the system (the whole pages
    /// inside the range; reading them later gives zeros): `MADV_REMOVE`, which frees the
    /// shared memory object's pages themselves. `MADV_DONTNEED` would not: it only drops this
    /// process's mapping of the pages, which the object keeps. The caller must own the bytes
    /// (nobody may read or write them meanwhile). Returns the bytes given back.
    pub fn remove_pages(&self, offset: usize, len: usize) -> std::io::Result<usize> {
        assert!(offset
            .checked_add(len)
            .is_some_and(|end| end <= self.map.len()));
        let page = PAGE;
        let base = self.map.as_mut_ptr() as usize;
        let start = (base + offset).next_multiple_of(page);
        let end = (base + offset + len) / page * page;
        if end <= start {
            return Ok(0);
        }
        // SAFETY: `start..end` is page-aligned and inside our mapping (checked above); no
        // reference into it exists (the region hands out only atomics in headers and raw
        // pointers for owned bytes), and the caller owns the bytes, so nobody observes the
        // zeroing; the mapping itself stays valid.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_REMOVE) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(end - start)
    }

    /// The shared-memory object: byte `offset` of the region is byte `offset` of the file
    /// (for `sendfile`).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.file.as_fd()
    }

    /// Removes the name now (the mapping stays valid) and gives up ownership: a successor
    /// may create a new object under the same name while we still use this one.
    pub fn unlink_name(&mut self) {
        if self.owner {
            let _ = shm_unlink(self.name.as_str());
            self.owner = false;
        }
    }

    /// Gives up ownership: the name is left in place when this handle drops (a forked child
    /// inherits its parent's handle but must not unlink the parent's objects).
    pub fn disown(&mut self) {
        self.owner = false;
    }
}

impl Drop for ShmRegion {
    fn drop(&mut self) {
        if self.owner {
            let _ = shm_unlink(self.name.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every region starts with this header, read before its version is known: it never moves.
    #[test]
    fn region_header_layout_is_pinned() {
        use std::mem::offset_of;
        assert_eq!(offset_of!(RegionHeader, magic), 0);
        assert_eq!(offset_of!(RegionHeader, version), 4);
        assert_eq!(offset_of!(RegionHeader, owner_pid), 8);
        assert_eq!(offset_of!(RegionHeader, owner_start), 16);
        assert_eq!(offset_of!(RegionHeader, len), 24);
        assert_eq!(size_of::<RegionHeader>(), 32);
        assert_eq!(align_of::<RegionHeader>(), 8);
    }

    fn unique(tag: &str) -> String {
        format!("/shmtest-{}-{tag}", std::process::id())
    }

    #[test]
    fn create_publish_open_and_unlink_on_drop() {
        let name = unique("a");
        let r = ShmRegion::create(&name, 4096, 0xabcd, 1).unwrap();
        assert!(matches!(
            ShmRegion::open(&name, 0xabcd, 1),
            Err(ShmError::Invalid { .. })
        ));
        r.publish(0xabcd);
        let o = ShmRegion::open(&name, 0xabcd, 1).unwrap();
        assert_eq!(o.header().owner(), ProcId::current());
        assert!(matches!(
            ShmRegion::open(&name, 0xabcd, 2),
            Err(ShmError::Invalid { .. })
        ));
        assert!(matches!(
            ShmRegion::open(&name, 0x1234, 1),
            Err(ShmError::Invalid { .. })
        ));
        // A live owner is never replaced.
        assert!(matches!(
            ShmRegion::create(&name, 4096, 0xabcd, 1),
            Err(ShmError::InUse { .. })
        ));
        drop(o);
        drop(r);
        assert!(matches!(
            ShmRegion::open(&name, 0xabcd, 1),
            Err(ShmError::Missing(_))
        ));
    }

    #[test]
    fn a_stale_region_is_replaced() {
        let name = unique("b");
        let mut r = ShmRegion::create(&name, 4096, 0xabcd, 1).unwrap();
        r.header().owner_start.store(1, Ordering::Relaxed); // pretend the owner died
        r.publish(0xabcd);
        r.disown();
        drop(r);
        let fresh = ShmRegion::create(&name, 8192, 0xabcd, 1).unwrap();
        assert_eq!(fresh.len(), 8192);
    }
}
