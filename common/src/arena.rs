//! The cache arena: `/<instance>.arena`, a shared-memory index and object space that `cached`
//! alone writes ([`ArenaOwner`]) and every proxy worker reads ([`ArenaReader`]), so a fresh hit
//! costs no message and no wake-up of another process. The proxy master maps it too
//! ([`Arena::release_worker`]) to release the pins of a worker it reaps.
//!
//! Must never: let a reader see a torn or reused object, reuse space a pin still names, trust
//! a length, offset or checksum read from the mapping without checking it, or wait.
//!
//! ## Layout (every offset and size a multiple of 64)
//! | bytes | what |
//! |---|---|
//! | 0..512 | `ArenaHeader`: `RegionHeader` (magic, version, owner pid + start time, length), hash seed, geometry and its checksum, `closed`, next generation, usage and counters, `head`/`tail` of each ring |
//! | index | `index_entries` × 16 bytes, 8-way set-associative buckets of `{loc, key hash}` |
//! | pins | `pin_rows` × (64-byte owner `{pid, start}` + `pin_slots` × 8-byte slots) |
//! | space | `capacity` bytes in `rings` equal rings of records `{64-byte ObjectHeader, key, metadata, body}` |
//!
//! A *loc* names one object: `generation (low 32 bits) << 32 | offset / 64`. 0 is "empty",
//! `u64::MAX` marks a pin slot claimed by a thread that has not pinned yet; generations whose
//! low 32 bits are 0 or `u32::MAX` are skipped, so no object has either loc.
//!
//! The object header holds the full 64-bit generation, the record state (`WRITING`,
//! `STREAMING`, `LIVE`, `RETIRED`, `ABANDONED`, `PAD`), the reader-set `ACCESSED` and
//! `SPLICED` bits, the lengths, the key hash, a checksum of the body (while `STREAMING`: the
//! committed length) and a checksum over every other field plus the key and metadata bytes.
//! Records are immutable once `LIVE`, except `state` and `flags`, which the checksum excludes
//! (as it excludes the body checksum word). Metadata is opaque here: the caller stores the
//! response head and its freshness data.
//!
//! ## Why rings with second chance, and a set-associative index
//! In each ring the writer appends records at `tail` and reclaims at `head` (FIFO); successive
//! reservations take the rings in turn. A `LIVE` record at a head whose `ACCESSED` bit a reader
//! set gets a second chance: it is copied to its ring's tail (a new generation; the index entry
//! moves to it in one store) and the bit starts clear. Readers thus keep recency with one
//! relaxed bit write and never touch a list, which is what an LRU across processes would need;
//! the copying per reservation is bounded by twice the bytes it needs. Each ring keeps a reserve
//! of [`ArenaConfig::reserve`] bytes free (a 64th of the ring, at most `max_record`), so a
//! second chance of a record no larger finds room; a larger one gets it only when the space
//! freed so far allows, and is evicted otherwise. (A reserve of `max_record` would hold a
//! quarter of a small arena empty: 25 % of the objects on the working-set row.)
//!
//! The price of a ring: a record at the head that is still pinned or still being filled stops
//! that ring's reclamation until it is let go. Several rings make that a local matter — a
//! reservation passes a held ring over for the next — and only when every ring is held is it
//! refused as [`ReserveError::Busy`]: the caller then streams the answer through unstored. Pins
//! last as long as one response takes; fills are bounded by their timeouts. (Size classes with
//! per-slot reuse would avoid head-of-line waits entirely, at the cost of internal
//! fragmentation and of a free list readers' pins must be checked against per slot.)
//!
//! Buckets of 8 entries need no probing, tombstones or moving entries, so a reader's view of an
//! entry is a single atomic word; a full bucket evicts its oldest object (counted). A reader
//! that races the writer can at worst miss, and a miss takes the ordinary path to `cached`.
//!
//! ## Pin protocol (hazard pointers)
//! | step | reader (worker thread)                               | writer (`cached`)                              |
//! |------|------------------------------------------------------|------------------------------------------------|
//! | 1    | claim a free slot of its process's row (CAS 0→`u64::MAX`) |                                           |
//! | 2    | `l = entry.loc` (Acquire); skip unless the key hash matches | publish: write the record, then `entry.loc = l` (SeqCst) |
//! | 3    | `slot = l` (SeqCst)                                  | unlink: `entry.loc = 0` or a new loc (SeqCst), then state `RETIRED` |
//! | 4    | `entry.loc == l`? (SeqCst) else retry from 2         | reclaim at head: snapshot every slot (SeqCst); skip while a slot names an offset inside the record |
//! | 5    | check the record: generation, `LIVE`, bounds, key    | before writing new bytes at `[a, b)`: no slot names an offset in `[a, b)` |
//! | 6    | read metadata and body; `slot = 0` (Release) when done |                                              |
//!
//! Why it is safe: steps 3–4 of the reader and 3–4 of the writer are SeqCst, so they fall in one
//! total order. If the reader's re-read (4) comes before the writer's unlink (3), its pin (3)
//! does too, and the writer's later snapshot sees it (or sees the slot cleared by the reader's
//! Release store, which makes every read of the reader happen before the writer's reuse). If the
//! unlink comes first, the re-read sees a different loc (generations are unique) and the reader
//! never reads the record. Bytes are only ever written where no pin points and where reclamation
//! has passed (or, after an adoption dropped a corrupt tail, where step 5 checked), so a pinned
//! record stays intact. `tests::pin_protocol_*` check every interleaving of a model of these
//! steps, and that swapping the reader's 3 and 4, or the writer's 3 and 4, is caught.
//!
//! ## Spliced pages
//! A reader sends a complete body of at least [`SPLICE_MIN`] bytes by `sendfile` from the
//! arena's file: the socket then holds references to the body's pages, not a copy, for as long
//! as the bytes wait in its queues (on loopback, in the receiver's queue until it reads them),
//! which may be long after the pin is gone. So a page may leave by reference only if it holds
//! nothing but this body's bytes (the partial pages at either end are copied), the reader sets
//! the record's `SPLICED` flag before the first such send, and the writer, when it reclaims a
//! record with the flag (after the pin snapshot, which orders every reader's flag before it),
//! gives the body's whole pages back (`MADV_REMOVE`) before its head passes the record. A
//! socket's reference keeps such a page, with the bytes it had, out of the file; the next
//! writes there fault in fresh zeroed pages. If giving back fails, the ring waits. An adopter
//! gives back all free space before it writes (a dead owner may have dropped flagged records).
//! `tests::spliced_pages_keep_their_bytes_in_a_socket_after_the_space_is_reused` sends a body
//! into a socket nobody reads, reuses its space, and checks the bytes that arrive.
//!
//! ## Streaming fills
//! A reservation may be linked in the index before its body is complete
//! ([`ArenaOwner::expose`]), for an answer of a declared length, so workers stream a fill
//! while it arrives instead of each waiting on `cached` with a segment. Its state is then
//! `STREAMING`, and its `body_sum` word holds the *committed length*:
//!
//! | who | step |
//! |---|---|
//! | writer, per write | copy the bytes past the committed length, then `body_sum = written` (Release) |
//! | writer, publish | state `LIVE` in place (Release; `RETIRED` if it was unlinked meanwhile), then `body_sum = checksum` (Release) |
//! | writer, failure | drop the reservation: CAS its index entry to 0 (SeqCst), then state `ABANDONED` (Release) |
//! | reader | pin and validate as above (`STREAMING` or `LIVE`); then [`Pinned::fill`]: state (Acquire); if `STREAMING`, `c = body_sum` (Acquire) and the state again: still `STREAMING` means `c` is a length; read only bytes below it |
//!
//! Why a reader never reads an unwritten or reused byte: bytes below a committed length were
//! copied before the Release store that published it; a pinned record is never reclaimed
//! (reclamation of an abandoned record runs after an Acquire fence on its state, so the unlink
//! precedes the pin snapshot exactly as for `RETIRED`); the writer only appends past the
//! committed length. A checksum in `body_sum` is never taken for a length: it is stored after
//! the state left `STREAMING` (Release), so a reader that read it (Acquire) sees that state
//! on its second read, and a pinned record's state never returns to `STREAMING`. An unlinked
//! streaming record (a PURGE, a newer object of its key, its bucket's eviction) stays its
//! reservation's: the owner's `retire` leaves records that are not `LIVE` alone, and its
//! readers finish. A reclaim at a ring's head waits for a `STREAMING` record as for a
//! `WRITING` one; an adoption abandons both. `tests::streaming_*` check every interleaving of
//! a model of these steps, and that committing before writing, reading past the committed
//! length, or reusing an abandoned record without the pin wait is caught.
//!
//! Pins are recorded per worker process: a row is claimed by `{pid, start time}`; the master calls
//! [`Arena::release_worker`] when it reaps a worker, and a row whose owner is dead is also taken
//! over by the next reader that attaches, so a crashed worker never leaks space.
//!
//! ## Lifetime
//! The arena belongs to the instance, not to one `cached`: it outlives a `cached` crash and a
//! graceful stop of `cached` while the proxy master lives, workers keep serving fresh hits from
//! it meanwhile, and the next `cached` calls [`ArenaOwner::open_or_adopt`], which validates the
//! geometry checksum, every record's checksum and the index against the records, drops what
//! fails (counted) and keeps the rest. Two `cached` adopting at once are told apart by a
//! compare-and-swap on the owner word (`claim`, pid and start time).
//!
//! When the instance stops as a whole, the last one out unlinks the name, in either order:
//!
//! | who | step 1 (announce) | step 2 (look at the other) | step 3 |
//! |---|---|---|---|
//! | `cached`, graceful stop (dropping the owner) | `claim = 0` (SeqCst CAS from its own word), fence | is the pool `/<instance>.pool` there with a live master? | no: CAS `claim` 0 → own word again and, if that wins, `closed = 1` and unlink |
//! | proxy master, at its exit ([`Arena::unlink_unowned`]) | unlink the pool name, fence | is `claim` a live process? | no: CAS `claim` to the master's word and, if that wins, `closed = 1` and unlink |
//!
//! Why nothing is left behind: both steps 1 precede both steps 2 in one total order (SeqCst
//! fences around the `claim` accesses; the kernel's name table orders the pool's unlink and
//! open), so at least one side sees the other gone. Why nothing live is unlinked: step 3 is a
//! CAS from the value step 2 judged dead, so an adopter that claimed the arena meanwhile wins
//! and keeps it (the loser of such a race is the stopping side; an adopter that loses to a
//! stopping master starts without an arena). A master that handed its names over to a new
//! master (an upgrade) leaves the arena to that one. Readers that see `closed` reopen.

use crate::names::Names;
use crate::process::ProcId;
use crate::shm::{RegionHeader, ShmError, ShmRegion, ShmSafe, PAGE};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

pub const ARENA_MAGIC: u32 = u32::from_le_bytes(*b"SHAR");
/// Layout version; any change to the structs or constants below bumps it.
pub const ARENA_VERSION: u32 = 3;
/// Most pin slots a row may have (threads of one worker that pin at once).
pub const MAX_PIN_SLOTS: u32 = 1024;
/// Most pin rows (worker processes).
pub const MAX_PIN_ROWS: u32 = 4096;
/// Records and offsets are multiples of this (one cache line).
pub const ALIGN: u64 = 64;
/// Most rings the object space is split into.
pub const MAX_RINGS: u32 = 16;

const HEADER_SIZE: usize = 512;
const OBJ: u64 = 64;
const WAYS: usize = 8;
const ROW_HEAD: usize = 64;
const RESERVED: u64 = u64::MAX;
/// A reader whose entry moved under it looks again this many times before calling it a miss.
const RETRIES: usize = 4;

const WRITING: u32 = 1;
const LIVE: u32 = 2;
const RETIRED: u32 = 3;
const ABANDONED: u32 = 4;
const PAD: u32 = 5;
const STREAMING: u32 = 6;
const ACCESSED: u32 = 1;
/// Flag: a reader handed some of the body's whole pages to a socket by reference (`sendfile`);
/// the owner gives them back before it reuses the space.
const SPLICED: u32 = 2;
/// Complete bodies at least this long leave by `sendfile` of their whole pages
/// ([`Pinned::send_head_and_body`]); below it the pages are few and a copy is as cheap.
pub const SPLICE_MIN: u64 = 32 << 10;

/// Is the kernel's page size `size`? Pages go by reference only then: the owner's give-back
/// (`MADV_REMOVE`) works in whole pages of that size, and on a kernel with larger pages it
/// would fail and hold the ring (bodies are then copied, as below [`SPLICE_MIN`]).
fn pages_are(size: usize) -> bool {
    static PAGE_SIZE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    // SAFETY: sysconf reads a constant of the system; it takes no pointers.
    let got = *PAGE_SIZE.get_or_init(|| unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as i64);
    got == size as i64
}

fn pack(offset: u64, generation: u64) -> u64 {
    ((generation & 0xffff_ffff) << 32) | (offset / ALIGN)
}

fn loc_offset(loc: u64) -> u64 {
    (loc & 0xffff_ffff) * ALIGN
}

fn loc_gen(loc: u64) -> u32 {
    (loc >> 32) as u32
}

fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// A streaming 64-bit checksum, eight bytes per step (not cryptographic: it detects torn or
/// stale bytes, and seeded it spreads keys over buckets).
#[derive(Clone)]
struct Sum {
    h: u64,
    word: u64,
    n: u32,
    total: u64,
}

const K1: u64 = 0x9e37_79b9_7f4a_7c15;
const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;

impl Sum {
    fn new(seed: u64) -> Sum {
        Sum {
            h: seed ^ K2,
            word: 0,
            n: 0,
            total: 0,
        }
    }

    fn mix(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(K1).rotate_left(31);
    }

    fn u64(&mut self, v: u64) -> &mut Sum {
        self.update(&v.to_le_bytes());
        self
    }

    fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        while self.n != 0 && !data.is_empty() {
            self.word |= u64::from(data[0]) << (8 * self.n);
            self.n = (self.n + 1) % 8;
            data = &data[1..];
            if self.n == 0 {
                let w = std::mem::take(&mut self.word);
                self.mix(w);
            }
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.mix(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        for &b in words.remainder() {
            self.word |= u64::from(b) << (8 * self.n);
            self.n += 1;
        }
    }

    fn finish(&self) -> u64 {
        let mut h = (self.h ^ self.word).wrapping_mul(K2) ^ self.total;
        h ^= h >> 33;
        h = h.wrapping_mul(K1);
        h ^ (h >> 29)
    }
}

/// Size and shape of an arena. `cached` derives it from its configuration; an arena left by a
/// previous run is adopted only if its geometry is the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaConfig {
    /// Bytes of object space (a multiple of 64, at least 4 × `max_record`, at most 2^38).
    pub capacity: u64,
    /// Largest record stored: 64-byte header, key, metadata and body, rounded up to 64.
    pub max_record: u64,
    /// Index entries (a multiple of 8).
    pub index_entries: u32,
    /// Pin rows: the most worker processes that may read at once.
    pub pin_rows: u32,
    /// Pin slots per row: the most objects one worker keeps pinned at once.
    pub pin_slots: u32,
    /// Independent rings the space is split into (1..=16), so a pinned head holds up one.
    pub rings: u32,
}

impl ArenaConfig {
    /// A geometry for `capacity` bytes: one index entry per 2 KiB (rounded to buckets), and
    /// as many rings (up to 16) as leave each at least 16 × `max_record` bytes.
    pub fn for_capacity(capacity: u64, max_record: u64, pin_rows: u32, pin_slots: u32) -> Self {
        let max_record = align_up(max_record);
        let rings = (capacity / max_record.max(1) / 16).clamp(1, u64::from(MAX_RINGS)) as u32;
        let unit = ALIGN * u64::from(rings);
        let capacity = capacity / unit * unit;
        let entries = (capacity / 2048).clamp(WAYS as u64, u64::from(u32::MAX) / 2) as u32;
        ArenaConfig {
            capacity,
            max_record,
            index_entries: entries.next_multiple_of(WAYS as u32),
            pin_rows,
            pin_slots,
            rings,
        }
    }

    /// Bytes of one ring.
    fn ring_capacity(&self) -> u64 {
        self.capacity / u64::from(self.rings)
    }

    /// Bytes each ring keeps free for second chances: a 64th of the ring, at most
    /// `max_record`, at least one header's worth (a multiple of 64).
    pub fn reserve(&self) -> u64 {
        align_up(self.ring_capacity() / 64).clamp(OBJ, self.max_record)
    }

    /// Checks the geometry (never trust one read from the mapping without this).
    pub fn check(&self) -> Result<(), &'static str> {
        if self.max_record < 2 * OBJ || self.max_record % ALIGN != 0 {
            return Err("max_record must be a multiple of 64 and at least 128");
        }
        if !(1..=MAX_RINGS).contains(&self.rings) {
            return Err("rings must be 1 to 16");
        }
        let unit = ALIGN * u64::from(self.rings);
        if self.capacity % unit != 0 || self.ring_capacity() / 4 < self.max_record {
            return Err("capacity must be a multiple of 64 × rings, each ring ≥ 4 × max_record");
        }
        if self.capacity / ALIGN > u64::from(u32::MAX) {
            return Err("capacity above 256 GiB");
        }
        if self.index_entries == 0 || self.index_entries % (WAYS as u32) != 0 {
            return Err("index entries must be a positive multiple of 8");
        }
        if !(1..=MAX_PIN_ROWS).contains(&self.pin_rows)
            || !(1..=MAX_PIN_SLOTS).contains(&self.pin_slots)
        {
            return Err("pin rows or slots out of range");
        }
        Ok(())
    }

    fn layout(&self) -> Layout {
        let index_offset = HEADER_SIZE;
        let pins_offset = index_offset + (self.index_entries as usize * 16).next_multiple_of(64);
        let row_size = ROW_HEAD + (self.pin_slots as usize * 8).next_multiple_of(64);
        let space_offset = (pins_offset + self.pin_rows as usize * row_size).next_multiple_of(4096);
        Layout {
            index_offset,
            pins_offset,
            row_size,
            space_offset,
            len: space_offset + self.capacity as usize,
        }
    }

    fn checksum(&self, seed: u64) -> u64 {
        Sum::new(seed)
            .u64(self.capacity)
            .u64(self.max_record)
            .u64(u64::from(self.index_entries))
            .u64(u64::from(self.pin_rows))
            .u64(u64::from(self.pin_slots))
            .u64(u64::from(self.rings))
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    index_offset: usize,
    pins_offset: usize,
    row_size: usize,
    space_offset: usize,
    len: usize,
}

#[repr(C)]
struct ArenaHeader {
    region: RegionHeader,
    seed: AtomicU64,
    capacity: AtomicU64,
    max_record: AtomicU64,
    index_entries: AtomicU32,
    pin_rows: AtomicU32,
    pin_slots: AtomicU32,
    /// 1 once the name is unlinked (the instance stopped, or an adopter replaced the arena
    /// with a new geometry): readers reopen.
    closed: AtomicU32,
    rings: AtomicU32,
    _pad: AtomicU32,
    geometry_check: AtomicU64,
    /// The owner as one word, `pid << 32 | start time mod 2^32` ([`claim_word`]), so that an
    /// adopter checks and takes it in one compare-and-swap.
    claim: AtomicU64,
    next_generation: AtomicU64,
    live_objects: AtomicU64,
    live_bytes: AtomicU64,
    insertions: AtomicU64,
    evictions: AtomicU64,
    second_chances: AtomicU64,
    removals: AtomicU64,
    bucket_evictions: AtomicU64,
    refused_busy: AtomicU64,
    corrupt_dropped: AtomicU64,
    adoptions: AtomicU64,
    ring: [RingPos; MAX_RINGS as usize],
}

/// Positions of one ring in bytes since the arena was created (physical offset = ring base +
/// position mod ring capacity); written by the owner only.
#[repr(C)]
struct RingPos {
    head: AtomicU64,
    tail: AtomicU64,
}

// SAFETY: only atomics (and a RegionHeader, itself only atomics); repr(C); alignment 8.
unsafe impl ShmSafe for ArenaHeader {}
const _: () = assert!(size_of::<ArenaHeader>() <= HEADER_SIZE);

#[repr(C)]
struct IndexEntry {
    loc: AtomicU64,
    hash: AtomicU64,
}

// SAFETY: only atomics; repr(C); alignment 8.
unsafe impl ShmSafe for IndexEntry {}
const _: () = assert!(size_of::<IndexEntry>() == 16);

#[repr(C)]
struct RowHead {
    owner_pid: AtomicU32,
    _pad: AtomicU32,
    /// Start time of the owner; 0 while a claimant has not written it yet.
    owner_start: AtomicU64,
}

// SAFETY: only atomics; repr(C); alignment 8.
unsafe impl ShmSafe for RowHead {}

#[repr(C)]
struct PinSlot(AtomicU64);

// SAFETY: only an atomic; repr(C); alignment 8.
unsafe impl ShmSafe for PinSlot {}

#[repr(C)]
struct ObjectHeader {
    generation: AtomicU64,
    state: AtomicU32,
    flags: AtomicU32,
    size: AtomicU64,
    key_hash: AtomicU64,
    body_len: AtomicU64,
    key_len: AtomicU32,
    meta_len: AtomicU32,
    body_sum: AtomicU64,
    check: AtomicU64,
}

// SAFETY: only atomics; repr(C); alignment 8.
unsafe impl ShmSafe for ObjectHeader {}
const _: () = assert!(size_of::<ObjectHeader>() == OBJ as usize);

/// A record header as read (plain values), bounds already checked against the space.
#[derive(Clone, Copy, Debug)]
struct Rec {
    phys: u64,
    generation: u64,
    state: u32,
    size: u64,
    key_hash: u64,
    body_len: u64,
    key_len: u32,
    meta_len: u32,
    body_sum: u64,
    check: u64,
}

impl Rec {
    fn loc(&self) -> u64 {
        pack(self.phys, self.generation)
    }

    fn key_at(&self) -> u64 {
        self.phys + OBJ
    }

    fn meta_at(&self) -> u64 {
        self.key_at() + u64::from(self.key_len)
    }

    fn body_at(&self) -> u64 {
        self.meta_at() + u64::from(self.meta_len)
    }
}

/// One mapping of an arena, with its geometry validated.
struct Map {
    region: ShmRegion,
    cfg: ArenaConfig,
    layout: Layout,
    seed: u64,
}

impl Map {
    fn from_region(region: ShmRegion) -> Result<Map, ShmError> {
        let invalid = |why: &str| ShmError::Invalid {
            name: region.name().to_string(),
            why: why.to_string(),
        };
        let h: &ArenaHeader = region.get(0);
        let cfg = ArenaConfig {
            capacity: h.capacity.load(Ordering::Relaxed),
            max_record: h.max_record.load(Ordering::Relaxed),
            index_entries: h.index_entries.load(Ordering::Relaxed),
            pin_rows: h.pin_rows.load(Ordering::Relaxed),
            pin_slots: h.pin_slots.load(Ordering::Relaxed),
            rings: h.rings.load(Ordering::Relaxed),
        };
        let seed = h.seed.load(Ordering::Relaxed);
        if cfg.checksum(seed) != h.geometry_check.load(Ordering::Relaxed) {
            return Err(invalid("geometry checksum mismatch"));
        }
        cfg.check().map_err(invalid)?;
        let layout = cfg.layout();
        if layout.len != region.len() {
            return Err(invalid("geometry does not match the region length"));
        }
        Ok(Map {
            region,
            cfg,
            layout,
            seed,
        })
    }

    fn header(&self) -> &ArenaHeader {
        self.region.get(0)
    }

    fn entry(&self, i: usize) -> &IndexEntry {
        assert!(i < self.cfg.index_entries as usize);
        self.region.get(self.layout.index_offset + i * 16)
    }

    fn bucket(&self, hash: u64) -> usize {
        (hash % (u64::from(self.cfg.index_entries) / WAYS as u64)) as usize * WAYS
    }

    fn row(&self, r: u32) -> &RowHead {
        assert!(r < self.cfg.pin_rows);
        self.region
            .get(self.layout.pins_offset + r as usize * self.layout.row_size)
    }

    fn slot(&self, r: u32, s: u32) -> &PinSlot {
        assert!(r < self.cfg.pin_rows && s < self.cfg.pin_slots);
        self.region.get(
            self.layout.pins_offset + r as usize * self.layout.row_size + ROW_HEAD + s as usize * 8,
        )
    }

    fn obj(&self, phys: u64) -> &ObjectHeader {
        assert!(phys + OBJ <= self.cfg.capacity && phys % ALIGN == 0);
        self.region.get(self.layout.space_offset + phys as usize)
    }

    /// The offset in the arena's file (and mapping) of object-space byte `phys`.
    fn file_offset(&self, phys: u64) -> u64 {
        self.layout.space_offset as u64 + phys
    }

    /// Raw pointer to `len` bytes of object space at `phys` (bounds checked).
    fn ptr(&self, phys: u64, len: u64) -> *mut u8 {
        assert!(phys
            .checked_add(len)
            .is_some_and(|e| e <= self.cfg.capacity));
        self.region
            .bytes_ptr(self.layout.space_offset + phys as usize, len as usize)
    }

    fn key_hash(&self, key: &[u8]) -> u64 {
        let mut s = Sum::new(self.seed);
        s.update(key);
        s.finish()
    }

    /// Reads the header at `phys`, refusing any length that leaves the record or the space.
    fn record(&self, phys: u64) -> Option<Rec> {
        if phys % ALIGN != 0 || phys + OBJ > self.cfg.capacity {
            return None;
        }
        let o = self.obj(phys);
        let r = Rec {
            phys,
            generation: o.generation.load(Ordering::Relaxed),
            state: o.state.load(Ordering::Relaxed),
            size: o.size.load(Ordering::Relaxed),
            key_hash: o.key_hash.load(Ordering::Relaxed),
            body_len: o.body_len.load(Ordering::Relaxed),
            key_len: o.key_len.load(Ordering::Relaxed),
            meta_len: o.meta_len.load(Ordering::Relaxed),
            body_sum: o.body_sum.load(Ordering::Relaxed),
            check: o.check.load(Ordering::Relaxed),
        };
        let content = OBJ
            .checked_add(u64::from(r.key_len) + u64::from(r.meta_len))
            .and_then(|n| n.checked_add(r.body_len))?;
        let fits = r.size % ALIGN == 0
            && r.size >= OBJ
            && r.size <= self.cfg.capacity - phys
            && (r.state == PAD || content <= r.size);
        fits.then_some(r)
    }

    /// Feeds `len` bytes at `phys` to `f` in pieces copied out of the mapping.
    ///
    /// Callers make sure nobody writes those bytes meanwhile: a reader holds a validated pin,
    /// the owner reads only records it wrote or is adopting.
    fn copy_out(&self, phys: u64, len: u64, mut f: impl FnMut(&[u8])) {
        // Not zeroed: this runs for every key compared on every hit.
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            let src = self.ptr(phys + done, n as u64);
            // SAFETY: `src..src+n` lies in the object space (`ptr` checks bounds); by the
            // caller's guarantee no process writes these bytes during the copy; `buf` is our
            // own stack memory of at least `n` bytes. The slice covers exactly the `n` bytes
            // just written, so it is initialised, and it lives in our memory only.
            let piece = unsafe {
                std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr().cast::<u8>(), n);
                std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n)
            };
            f(piece);
            done += n as u64;
        }
    }

    /// Copies `data` into object space at `phys`. Only the owner calls it, on bytes no pin
    /// names and no reader can reach (not yet published, or checked by `check_range`).
    fn copy_in(&self, phys: u64, data: &[u8]) {
        let dst = self.ptr(phys, data.len() as u64);
        // SAFETY: `dst..dst+len` lies in the object space (`ptr` checks bounds); the owner is
        // the only writer of object bytes and writes only space no reader may read (see above);
        // `data` is in our own memory, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
    }

    /// Clears the index entry naming `loc` (of key hash `hash`), if one still does. A
    /// compare-and-swap, so a reservation abandoned on a fill's thread may unlink itself
    /// while the owner, under its lock, links other objects (an entry the owner changed no
    /// longer names `loc`).
    fn unlink_loc(&self, hash: u64, loc: u64) {
        let base = self.bucket(hash);
        for i in base..base + WAYS {
            // ORDERING: SeqCst: an unlink (module doc, writer step 3).
            if self
                .entry(i)
                .loc
                .compare_exchange(loc, 0, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    fn key_eq(&self, r: &Rec, key: &[u8]) -> bool {
        if r.key_len as usize != key.len() {
            return false;
        }
        let mut at = 0;
        let mut same = true;
        self.copy_out(r.key_at(), key.len() as u64, |piece| {
            same &= piece == &key[at..at + piece.len()];
            at += piece.len();
        });
        same
    }

    /// The checksum over the fields fixed at reservation (all but `state`, `flags`, `body_sum`
    /// and `check`), plus key and metadata: valid from the reservation on, so an adoption can
    /// step over a fill the previous owner left unfinished. `body_sum` covers the body.
    fn header_sum(&self, r: &Rec) -> u64 {
        let mut s = Sum::new(self.seed);
        s.u64(r.generation)
            .u64(r.size)
            .u64(r.key_hash)
            .u64(r.body_len)
            .u64((u64::from(r.key_len) << 32) | u64::from(r.meta_len))
            .u64(u64::from(r.state == PAD));
        if r.state != PAD {
            self.copy_out(
                r.key_at(),
                u64::from(r.key_len) + u64::from(r.meta_len),
                |p| s.update(p),
            );
        }
        s.finish()
    }

    fn body_sum(&self, r: &Rec) -> u64 {
        let mut s = Sum::new(self.seed);
        self.copy_out(r.body_at(), r.body_len, |p| s.update(p));
        s.finish()
    }

    /// The byte ranges of the records every pin slot names. Taken after the unlinks it must
    /// cover. The owner reads the pinned records' sizes (headers only it writes); a stale pin
    /// whose header is unreadable counts as one header's worth.
    fn pinned_ranges(&self) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        for r in 0..self.cfg.pin_rows {
            for s in 0..self.cfg.pin_slots {
                // ORDERING: SeqCst, the writer's side of the hazard-pointer handshake (module
                // doc, step 4): ordered after our unlink stores in the single total order, so a
                // reader whose re-validation succeeded has its pin visible here; a cleared slot
                // read here was cleared with Release after the reader's last read.
                let l = self.slot(r, s).0.load(Ordering::SeqCst);
                if l != 0 && l != RESERVED {
                    let at = loc_offset(l);
                    let size = self.record(at).map_or(OBJ, |r| r.size);
                    v.push((at, at.saturating_add(size)));
                }
            }
        }
        v
    }

    fn usage(&self) -> Usage {
        let h = self.header();
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let used = h.ring[..self.cfg.rings as usize]
            .iter()
            .map(|g| c(&g.tail).saturating_sub(c(&g.head)))
            .sum();
        Usage {
            capacity: self.cfg.capacity,
            used,
            live_objects: c(&h.live_objects),
            live_bytes: c(&h.live_bytes),
            insertions: c(&h.insertions),
            evictions: c(&h.evictions),
            second_chances: c(&h.second_chances),
            removals: c(&h.removals),
            bucket_evictions: c(&h.bucket_evictions),
            refused_busy: c(&h.refused_busy),
            corrupt_dropped: c(&h.corrupt_dropped),
            adoptions: c(&h.adoptions),
        }
    }
}

/// Does any pinned record overlap `[start, start + len)`?
fn any_in(pins: &[(u64, u64)], start: u64, len: u64) -> bool {
    pins.iter().any(|&(a, b)| a < start + len && b > start)
}

/// Usage numbers and counters (counters only go up; the owner writes them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub capacity: u64,
    /// Bytes between head and tail: live records, and garbage not yet reclaimed.
    pub used: u64,
    pub live_objects: u64,
    pub live_bytes: u64,
    pub insertions: u64,
    pub evictions: u64,
    /// Accessed objects copied to the tail instead of being evicted.
    pub second_chances: u64,
    pub removals: u64,
    /// Objects evicted because their index bucket was full.
    pub bucket_evictions: u64,
    /// Reservations refused because a pin or a fill in progress held the head.
    pub refused_busy: u64,
    /// Records or index entries dropped by an adoption because they failed validation.
    pub corrupt_dropped: u64,
    pub adoptions: u64,
}

/// A mapping of the arena, for readers and for the master (which releases dead workers' pins).
pub struct Arena {
    map: Arc<Map>,
}

impl Arena {
    /// Opens the published arena of `names` (a worker, or the master).
    pub fn open(names: &Names) -> Result<Arena, ShmError> {
        let region = ShmRegion::open(&names.arena, ARENA_MAGIC, ARENA_VERSION)?;
        Ok(Arena {
            map: Arc::new(Map::from_region(region)?),
        })
    }

    /// True once the owner stopped gracefully: open the arena again to follow its successor.
    pub fn is_closed(&self) -> bool {
        // ORDERING: Acquire pairs with the owner's Release store in its Drop.
        self.map.header().closed.load(Ordering::Acquire) != 0
    }

    pub fn usage(&self) -> Usage {
        self.map.usage()
    }

    /// Master: clears the pins of the dead worker `pid` and frees its row. Returns the number
    /// of pins cleared. A row whose owner with that pid is still alive is left alone (the pid
    /// was reused before the call).
    pub fn release_worker(&self, pid: u32) -> u32 {
        (0..self.map.cfg.pin_rows)
            .filter_map(|r| release_dead_row(&self.map, r, Some(pid)))
            .sum()
    }

    /// The proxy master at its exit, after it unlinked its pool name: unlinks the arena of
    /// `names` unless a live `cached` owns it (that one unlinks it at its own stop, finding
    /// no master). `true` if it unlinked it. See the module doc, Lifetime.
    pub fn unlink_unowned(names: &Names) -> bool {
        // ORDERING: orders our unlink of the pool name (step 1) before the look at `claim`.
        fence(Ordering::SeqCst);
        let Ok(region) = ShmRegion::open(&names.arena, ARENA_MAGIC, ARENA_VERSION) else {
            return false;
        };
        let h: &ArenaHeader = region.get(0);
        // ORDERING: SeqCst: step 2, in the total order with the owner's release of `claim`.
        let prev = h.claim.load(Ordering::SeqCst);
        if claim_alive(prev) {
            return false;
        }
        // ORDERING: SeqCst: step 3; an adopter that claimed it since wins and keeps it.
        let me = claim_word(ProcId::current());
        if h.claim
            .compare_exchange(prev, me, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        close_and_unlink(&region);
        true
    }

    /// Checks the arena from outside its owner (the stress tool), as [`ArenaOwner::audit`]
    /// does: the rings walk whole, every record checksum holds, the index names exactly the
    /// live records and the counters match. Read-only; exact only while the owner is idle
    /// (a concurrent publish or reclaim may make it report a passing inconsistency).
    pub fn audit(&self) -> Result<Audit, String> {
        let view = ArenaOwner {
            map: Arc::clone(&self.map),
            unlink_on_drop: false,
            pool: String::new(),
            cursor: 0,
        };
        view.audit()
    }

    /// Pin slots in use (naming an object, or claimed), over every row: 0 once no reader
    /// sends anything.
    pub fn pins_held(&self) -> u64 {
        let cfg = &self.map.cfg;
        let mut n = 0;
        for r in 0..cfg.pin_rows {
            for s in 0..cfg.pin_slots {
                // ORDERING: Relaxed: a count for a check run while readers are idle.
                n += u64::from(self.map.slot(r, s).0.load(Ordering::Relaxed) != 0);
            }
        }
        n
    }

    /// Claims a pin row for this process, taking over one whose owner is dead if none is free.
    pub fn attach(&self) -> Result<ArenaReader, AttachError> {
        let map = &self.map;
        let me = ProcId::current();
        for pass in 0..2 {
            for r in 0..map.cfg.pin_rows {
                if pass == 1 {
                    release_dead_row(map, r, None);
                }
                let row = map.row(r);
                // ORDERING: AcqRel: Acquire sees the clears of the slots by the row's previous
                // owner (or by whoever released it); Release publishes our claim.
                if row
                    .owner_pid
                    .compare_exchange(0, me.pid, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                // ORDERING: Release: whoever sees our start time sees our pid claim.
                row.owner_start.store(me.start, Ordering::Release);
                return Ok(ArenaReader {
                    row: Arc::new(PinRow {
                        map: Arc::clone(map),
                        row: r,
                        hint: AtomicU32::new(0),
                    }),
                });
            }
        }
        Err(AttachError::NoFreeRow(map.cfg.pin_rows))
    }
}

/// A row's owner pid while someone releases it: no process has it, so nobody claims it then.
const RELEASING: u32 = u32::MAX;

/// Frees row `r` if its owner (`pid`, if given) is dead: clears its pins and makes it
/// claimable. Returns the number of pins cleared, or `None` if the row was not released.
fn release_dead_row(map: &Map, r: u32, pid: Option<u32>) -> Option<u32> {
    let row = map.row(r);
    // ORDERING: Acquire pairs with the claimant's Release of `owner_start`.
    let owner = row.owner_pid.load(Ordering::Acquire);
    if owner == 0 || owner == RELEASING || pid.is_some_and(|p| p != owner) {
        return None;
    }
    let start = row.owner_start.load(Ordering::Relaxed);
    // A start of 0 is a claim under way: only the master, naming a pid it reaped, may end it.
    if (start == 0 && pid.is_none()) || (ProcId { pid: owner, start }).alive() {
        return None;
    }
    // ORDERING: AcqRel: of the master, an adopting owner and attaching readers releasing the
    // same dead row at once, one wins; Acquire sees the dead owner's last pin stores.
    row.owner_pid
        .compare_exchange(owner, RELEASING, Ordering::AcqRel, Ordering::Relaxed)
        .ok()?;
    Some(clear_row(map, r))
}

fn clear_slots(map: &Map, r: u32) -> u32 {
    let mut n = 0;
    for s in 0..map.cfg.pin_slots {
        // ORDERING: Release (the reader's Drop does the same): the owner's SeqCst snapshot
        // that sees 0 is ordered after this clear. The dead reader reads nothing any more.
        if map.slot(r, s).0.swap(0, Ordering::Release) != 0 {
            n += 1;
        }
    }
    n
}

fn clear_row(map: &Map, r: u32) -> u32 {
    let n = clear_slots(map, r);
    let row = map.row(r);
    row.owner_start.store(0, Ordering::Relaxed);
    // ORDERING: Release: the next claimant (Acquire CAS) sees the cleared slots.
    row.owner_pid.store(0, Ordering::Release);
    n
}

#[derive(Debug, PartialEq, Eq)]
pub enum AttachError {
    /// Every pin row is held by a live process.
    NoFreeRow(u32),
}

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachError::NoFreeRow(n) => write!(f, "all {n} arena pin rows are in use"),
        }
    }
}

impl std::error::Error for AttachError {}

/// A worker's reading handle: its own pin row, freed when the handle and every [`Pinned`]
/// taken through it are gone.
pub struct ArenaReader {
    row: Arc<PinRow>,
}

/// One claimed pin row in one mapping.
struct PinRow {
    map: Arc<Map>,
    row: u32,
    hint: AtomicU32,
}

impl Drop for PinRow {
    fn drop(&mut self) {
        // Every Pinned holds the row, so none is left: its slots are all 0.
        clear_row(&self.map, self.row);
    }
}

/// What a lookup found.
pub enum Lookup {
    Hit(Pinned),
    Miss,
    /// Every pin slot of this worker is in use: serve it the ordinary way (and count it).
    NoPinSlot,
}

impl ArenaReader {
    /// True once the owner stopped gracefully (see [`Arena::is_closed`]).
    pub fn is_closed(&self) -> bool {
        // ORDERING: Acquire pairs with the owner's Release store in its Drop.
        self.row.map.header().closed.load(Ordering::Acquire) != 0
    }

    fn claim_slot(&self) -> Option<u32> {
        let slots = self.row.map.cfg.pin_slots;
        let start = self.row.hint.fetch_add(1, Ordering::Relaxed);
        (0..slots)
            .map(|k| start.wrapping_add(k) % slots)
            .find(|&s| {
                // Relaxed: the slot's value only matters to the owner from the SeqCst pin store on.
                self.row
                    .map
                    .slot(self.row.row, s)
                    .0
                    .compare_exchange(0, RESERVED, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            })
    }

    /// Looks `key` up and pins the object found. The object stays intact until the
    /// [`Pinned`] drops, whatever the owner does meanwhile.
    pub fn lookup(&self, key: &[u8]) -> Lookup {
        let map = &*self.row.map;
        let hash = map.key_hash(key);
        let Some(s) = self.claim_slot() else {
            return Lookup::NoPinSlot;
        };
        let pin = &map.slot(self.row.row, s).0;
        let base = map.bucket(hash);
        for _ in 0..RETRIES {
            let mut moved = false;
            for way in 0..WAYS {
                let e = map.entry(base + way);
                // ORDERING: Acquire pairs with the owner's SeqCst (hence Release) store of the
                // entry: the record's bytes, written before it, are visible to us.
                let l = e.loc.load(Ordering::Acquire);
                if l == 0 || e.hash.load(Ordering::Relaxed) != hash {
                    continue;
                }
                // ORDERING: SeqCst, the reader's side of the hazard-pointer handshake (module
                // doc, steps 3 and 4): the pin and the re-read are ordered in the single total
                // order with the owner's unlink and snapshot.
                pin.store(l, Ordering::SeqCst);
                // ORDERING: SeqCst (see above).
                if e.loc.load(Ordering::SeqCst) != l {
                    moved = true;
                    continue;
                }
                if let Some(r) = self.validate(l, hash, key) {
                    let o = map.obj(r.phys);
                    if o.flags.load(Ordering::Relaxed) & ACCESSED == 0 {
                        o.flags.fetch_or(ACCESSED, Ordering::Relaxed);
                    }
                    return Lookup::Hit(Pinned {
                        row: Arc::clone(&self.row),
                        slot: s,
                        rec: r,
                    });
                }
            }
            if !moved {
                break;
            }
        }
        // ORDERING: Release: our reads of any record happen before the owner's reuse of it.
        pin.store(0, Ordering::Release);
        Lookup::Miss
    }

    /// The record a pinned, still-linked loc names, if it is the live object for `key`.
    fn validate(&self, l: u64, hash: u64, key: &[u8]) -> Option<Rec> {
        let map = &self.row.map;
        let r = map.record(loc_offset(l))?;
        (matches!(r.state, LIVE | STREAMING)
            && r.generation as u32 == loc_gen(l)
            && r.key_hash == hash
            && map.key_eq(&r, key))
        .then_some(r)
    }
}

/// How much of a pinned object's body is there ([`Pinned::fill`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    Complete,
    /// Still being filled: this many bytes are committed.
    Partial(u64),
    /// The fill failed: the body will never be complete.
    Abandoned,
}

/// A pinned object: its metadata and body stay intact until this drops. The bytes are reached
/// only through copies and raw pointers (never a `&[u8]` over the shared mapping).
pub struct Pinned {
    row: Arc<PinRow>,
    slot: u32,
    rec: Rec,
}

impl Pinned {
    /// Full generation of the object (changes whenever the object is stored again).
    pub fn generation(&self) -> u64 {
        self.rec.generation
    }

    pub fn meta_len(&self) -> usize {
        self.rec.meta_len as usize
    }

    /// The body's whole length (of a streaming object too: only those are exposed).
    pub fn body_len(&self) -> u64 {
        self.rec.body_len
    }

    /// How much of the body may be read: all of it, or (an object still being filled) the
    /// length committed so far, or nothing more (its fill was abandoned: stop, and never
    /// present what was read as the whole body).
    pub fn fill(&self) -> Fill {
        if self.rec.state == LIVE {
            return Fill::Complete;
        }
        let o = self.row.map.obj(self.rec.phys);
        loop {
            // ORDERING: Acquire pairs with the writer's Release stores of the state (publish,
            // abandon): once it is not STREAMING every body byte written is visible.
            match o.state.load(Ordering::Acquire) {
                STREAMING => {
                    // ORDERING: Acquire pairs with `Reservation::write`'s Release store: the
                    // body bytes below the length read are visible.
                    let c = o.body_sum.load(Ordering::Acquire);
                    // While STREAMING, `body_sum` holds the committed length; publish stores
                    // the state first (Release), then the checksum there, so a value read
                    // before a state still STREAMING (Acquire) is a length. (The state of a
                    // pinned record never becomes STREAMING again.)
                    // ORDERING: Acquire (see above).
                    if o.state.load(Ordering::Acquire) == STREAMING {
                        return if c >= self.rec.body_len {
                            Fill::Complete
                        } else {
                            Fill::Partial(c)
                        };
                    }
                }
                ABANDONED => return Fill::Abandoned,
                // LIVE, or RETIRED after it was complete (a pinned record is never reused).
                _ => return Fill::Complete,
            }
        }
    }

    /// Body bytes that may be read now (see [`Pinned::fill`]; 0 once abandoned).
    fn readable(&self) -> u64 {
        match self.fill() {
            Fill::Complete => self.rec.body_len,
            Fill::Partial(c) => c,
            Fill::Abandoned => 0,
        }
    }

    /// The checksum of the body: kept by a second chance (which changes the generation), so
    /// with the key and length it tells the same stored bytes apart from a replacement.
    pub fn body_sum(&self) -> u64 {
        self.rec.body_sum
    }

    /// A copy of the metadata (the stored head and freshness data: small).
    pub fn meta(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.meta_len());
        self.row
            .map
            .copy_out(self.rec.meta_at(), u64::from(self.rec.meta_len), |p| {
                v.extend_from_slice(p)
            });
        v
    }

    /// Copies body bytes from `offset` into `buf`; returns how many (0 at the end, or of a
    /// streaming object at what is committed so far: ask [`Pinned::fill`]).
    pub fn read_body(&self, offset: u64, buf: &mut [u8]) -> usize {
        let n = (buf.len() as u64).min(self.readable().saturating_sub(offset));
        let src = self.row.map.ptr(self.rec.body_at() + offset, n);
        // SAFETY: `src..src+n` lies inside this record's body, below its committed length (n
        // is clamped to it, `ptr` checks the space's bounds); the record is pinned and was
        // validated as linked after the pin, so the owner writes none of those bytes (it only
        // appends past the committed length) until the pin is cleared; `buf` is ours.
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), n as usize) };
        n as usize
    }

    /// Sends body bytes from `offset` up to `end` (exclusive) straight from shared memory to
    /// a non-blocking socket: what the socket took, `Ok(0)` at `end` or the body's end (of a
    /// streaming object: of what is committed so far, see [`Pinned::fill`]), `WouldBlock`
    /// when it is full.
    pub fn send_body(&self, sock: BorrowedFd<'_>, offset: u64, end: u64) -> io::Result<usize> {
        self.send_head_and_body(sock, &[], offset, end, false)
    }

    /// Sends `head`, then body bytes from `offset` up to `end` as [`Pinned::send_body`] does:
    /// what the socket took of both (the head first), or `WouldBlock` when it is full. A head
    /// sent on its own is a packet, and a wake-up of the client, of its own, so the head
    /// leaves with the first body bytes.
    ///
    /// A complete body of at least [`SPLICE_MIN`] bytes leaves without a copy: the head and
    /// the bytes before the body's first whole page go in one `sendmsg` (`MSG_MORE`), then its
    /// whole pages by `sendfile` from the arena's file, which hands the kernel references to
    /// the pages instead of copying them (measured on 1 MiB hits, wrk -c64: the copy was half
    /// of the worker's CPU time). The record is marked `SPLICED` first, so the owner gives
    /// those pages back before it reuses the space (module doc, "Spliced pages"): a page a
    /// socket still holds keeps the bytes it had. The last partial page is copied by the next
    /// call. Anything else goes in one `sendmsg` of head and body. `closing`: the connection
    /// closes after these bytes, so they may wait for the FIN and leave with it (`MSG_MORE`).
    pub fn send_head_and_body(
        &self,
        sock: BorrowedFd<'_>,
        head: &[u8],
        offset: u64,
        end: u64,
        closing: bool,
    ) -> io::Result<usize> {
        let n = self.readable().min(end).saturating_sub(offset);
        if head.is_empty() && n == 0 {
            return Ok(0);
        }
        let (copied, pages) = self.splice_split(offset, n);
        let before = head.len() + copied as usize;
        let sent = if before > 0 {
            self.send_copy(sock, head, offset, copied, pages > 0 || closing)?
        } else {
            0
        };
        if pages == 0 || sent < before {
            return Ok(sent);
        }
        // Before any page leaves: the owner reads this (after our pin is gone) when it
        // reclaims the record. Relaxed: our pin's Release clear orders it before that read.
        self.row
            .map
            .obj(self.rec.phys)
            .flags
            .fetch_or(SPLICED, Ordering::Relaxed);
        let from = self
            .row
            .map
            .file_offset(self.rec.body_at() + offset + copied);
        let mut at = from as libc::off_t;
        match nix::sys::sendfile::sendfile(
            sock,
            self.row.map.region.fd(),
            Some(&mut at),
            pages as usize,
        ) {
            Ok(k) => Ok(sent + k),
            // Nothing went: `WouldBlock` (never `Ok(0)`, which means "at the end").
            Err(e) if sent == 0 => Err(e.into()),
            // What went before the pages was sent: report that; the next call tells the rest.
            Err(_) => Ok(sent),
        }
    }

    /// Will sending body bytes `offset..end` hand some of its pages to the socket by reference?
    pub fn splices(&self, offset: u64, end: u64) -> bool {
        let n = self.readable().min(end).saturating_sub(offset);
        self.splice_split(offset, n).1 > 0
    }

    /// Of `n` body bytes from `offset`: how many to copy before the whole pages that may leave
    /// by reference, and how many bytes those pages hold (0: copy all `n`). Only a complete
    /// body of at least [`SPLICE_MIN`] bytes has pages to splice, and only pages that hold
    /// nothing but its body bytes: the owner can give those back alone.
    fn splice_split(&self, offset: u64, n: u64) -> (u64, u64) {
        if self.rec.body_len < SPLICE_MIN
            || !pages_are(PAGE)
            || !matches!(self.fill(), Fill::Complete)
        {
            return (n, 0);
        }
        let page = PAGE as u64;
        let first = self.row.map.file_offset(self.rec.body_at() + offset);
        let lead = first.next_multiple_of(page) - first;
        let pages = (n.saturating_sub(lead)) / page * page;
        if pages == 0 {
            return (n, 0);
        }
        (lead, pages)
    }

    /// One non-blocking `sendmsg` of `head` and `n` body bytes from `offset` (`more`: further
    /// bytes follow at once, so the kernel need not push a partial segment).
    fn send_copy(
        &self,
        sock: BorrowedFd<'_>,
        head: &[u8],
        offset: u64,
        n: u64,
        more: bool,
    ) -> io::Result<usize> {
        let src = self.row.map.ptr(self.rec.body_at() + offset, n);
        let iov = [
            libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            },
            libc::iovec {
                iov_base: src.cast(),
                iov_len: n as usize,
            },
        ];
        let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT | if more { libc::MSG_MORE } else { 0 };
        // SAFETY: `src..src+n` lies inside this pinned record's body below its committed
        // length (the callers clamp `n` to `readable`, as in `read_body`), which nobody writes
        // while we hold the pin, and the kernel only reads it; `head` is a live slice; the
        // msghdr points at `iov`, which outlives the call; `sock` is a live fd.
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = iov.len();
            libc::sendmsg(sock.as_raw_fd(), &msg, flags)
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }

    /// The readable body (see [`Pinned::fill`]) as a raw pointer and length, valid while this
    /// `Pinned` lives (for `writev`). Never turn it into a `&[u8]`: the mapping is shared with
    /// other processes.
    pub fn body_raw(&self) -> (*const u8, usize) {
        let n = self.readable();
        (
            self.row.map.ptr(self.rec.body_at(), n).cast_const(),
            n as usize,
        )
    }
}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinned")
            .field("generation", &self.rec.generation)
            .field("body_len", &self.rec.body_len)
            .finish()
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // ORDERING: Release: every read of the record happens before the owner's reuse, which
        // it starts only after a SeqCst snapshot that reads this 0.
        self.row
            .map
            .slot(self.row.row, self.slot)
            .0
            .store(0, Ordering::Release);
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReserveError {
    /// The record would exceed `max_record`: stream the answer through unstored.
    TooLarge { record: u64, max: u64 },
    /// A pin or a fill in progress holds the head of the ring (or the space to write into).
    Busy,
}

impl std::fmt::Display for ReserveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReserveError::TooLarge { record, max } => {
                write!(f, "record of {record} bytes exceeds the arena's {max}")
            }
            ReserveError::Busy => write!(f, "arena space is held by a pin or a fill"),
        }
    }
}

impl std::error::Error for ReserveError {}

#[derive(Debug, PartialEq, Eq)]
pub enum PublishError {
    /// Fewer body bytes were written than reserved; the space is freed.
    Incomplete { written: u64, expected: u64 },
    /// An exposed reservation was unlinked while it was filled (a removal, a newer object of
    /// its key, or its bucket's eviction): it is not published, and its space is freed.
    Unlinked,
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Incomplete { written, expected } => {
                write!(f, "body incomplete: {written} of {expected} bytes")
            }
            PublishError::Unlinked => write!(f, "removed from the index while it was filled"),
        }
    }
}

impl std::error::Error for PublishError {}

/// How the owner started.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// A new, empty arena (none existed, or the old one was unusable: why).
    Cold(String),
    /// The arena of a previous owner, validated and repaired.
    Adopted(Adoption),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Adoption {
    /// Live objects kept.
    pub objects: u64,
    pub bytes: u64,
    /// Records and index entries that failed validation and were dropped.
    pub dropped: u64,
    /// Fills the previous owner left unfinished (their space is freed).
    pub abandoned_fills: u64,
}

/// Space reserved for one object; fill the body with [`Reservation::write`], then
/// [`ArenaOwner::publish`]. Readers see nothing of it before, unless it was exposed
/// ([`ArenaOwner::expose`]): then they stream it as it is written. Dropping it unpublished
/// frees it (an exposed one is abandoned: its readers stop, its index entry goes).
pub struct Reservation {
    map: Arc<Map>,
    rec: Rec,
    key: Vec<u8>,
    written: u64,
    sum: Sum,
    done: bool,
    /// Linked in the index as `STREAMING`: each write advances the committed length.
    exposed: bool,
}

impl Reservation {
    /// Appends body bytes; returns how many fitted (fewer than `data.len()` only at the end).
    /// For an exposed reservation the bytes are committed (readers may read them) on return.
    pub fn write(&mut self, data: &[u8]) -> usize {
        let n = data.len().min((self.rec.body_len - self.written) as usize);
        self.map
            .copy_in(self.rec.body_at() + self.written, &data[..n]);
        self.sum.update(&data[..n]);
        self.written += n as u64;
        if self.exposed {
            // ORDERING: Release: a streaming reader whose Acquire load sees this length sees
            // every body byte below it (written by the copy above).
            self.map
                .obj(self.rec.phys)
                .body_sum
                .store(self.written, Ordering::Release);
        }
        n
    }

    /// Full generation of the object being written (it keeps it once published).
    pub fn generation(&self) -> u64 {
        self.rec.generation
    }

    /// Body bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.rec.body_len - self.written
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let o = self.map.obj(self.rec.phys);
        if self.exposed {
            // Readers find it no more (step 3 of the pin protocol: an unlink, before the
            // owner's snapshot that sees the ABANDONED state below), then they stop.
            self.map.unlink_loc(self.rec.key_hash, self.rec.loc());
            // ORDERING: Release: pairs with streaming readers' Acquire load of the state (they
            // stop), and with the owner's Acquire fence in `reclaim_one`, which so sees the
            // unlink before its pin snapshot and our last body write before any reuse.
            o.state.store(ABANDONED, Ordering::Release);
        } else {
            o.state.store(ABANDONED, Ordering::Relaxed);
        }
    }
}

/// Result of [`ArenaOwner::audit`]: a walk over the ring, compared with the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    pub live_objects: u64,
    pub live_bytes: u64,
    /// Retired, abandoned and padding records not yet reclaimed.
    pub garbage_bytes: u64,
    /// Fills in progress.
    pub writing_bytes: u64,
}

/// The arena's only writer (`cached`). Methods take `&mut self`: the caller serialises them
/// (its cache lock); body fills run outside it, through their [`Reservation`].
pub struct ArenaOwner {
    map: Arc<Map>,
    /// Let go of the arena on drop (see the module doc, Lifetime); `false` for a crash.
    unlink_on_drop: bool,
    /// The instance's segment pool: while its master lives, a graceful stop keeps the arena.
    pool: String,
    /// The ring the next reservation tries first (they take turns).
    cursor: usize,
}

impl ArenaOwner {
    /// Adopts the arena a previous owner left (validating it), or creates a new one.
    pub fn open_or_adopt(names: &Names, cfg: ArenaConfig) -> Result<(ArenaOwner, Start), ShmError> {
        let name = names.arena.clone();
        if let Err(why) = cfg.check() {
            return Err(ShmError::Invalid {
                name,
                why: why.to_string(),
            });
        }
        let reason = match ShmRegion::open(&name, ARENA_MAGIC, ARENA_VERSION) {
            Ok(region) => {
                match Map::from_region(region) {
                    Ok(map) => {
                        // ORDERING: Acquire pairs with the claim of the previous owner.
                        let prev = map.header().claim.load(Ordering::Acquire);
                        if claim_alive(prev) {
                            let pid = (prev >> 32) as u32;
                            return Err(ShmError::InUse { name, pid });
                        }
                        if map.cfg == cfg {
                            claim(&map, prev).map_err(|pid| ShmError::InUse {
                                name: name.clone(),
                                pid,
                            })?;
                            let mut owner = ArenaOwner {
                                map: Arc::new(map),
                                unlink_on_drop: true,
                                pool: names.pool.clone(),
                                cursor: 0,
                            };
                            let report = owner.repair();
                            // The free space may hold pages a reader spliced that the dead
                            // owner had not given back yet (what it dropped, or a record it
                            // reclaimed and died): give all of it back before writing there.
                            owner.trim_free();
                            return Ok((owner, Start::Adopted(report)));
                        }
                        // ORDERING: Release pairs with readers' Acquire in `is_closed`.
                        map.header().closed.store(1, Ordering::Release);
                        "its geometry differs from the configuration".to_string()
                    }
                    // A live owner of an unusable arena still refuses us (in `create`).
                    Err(e) => e.to_string(),
                }
            }
            Err(ShmError::Missing(_)) => "none existed".to_string(),
            Err(ShmError::Invalid { why, .. }) => why,
            Err(e) => return Err(e),
        };
        Ok((Self::create(names, cfg)?, Start::Cold(reason)))
    }

    fn create(names: &Names, cfg: ArenaConfig) -> Result<ArenaOwner, ShmError> {
        let layout = cfg.layout();
        let mut region = ShmRegion::create(&names.arena, layout.len, ARENA_MAGIC, ARENA_VERSION)?;
        // Unlinked by the last one out (see `Drop` and `Arena::unlink_unowned`).
        region.disown();
        let me = ProcId::current();
        let seed = (me.start << 24) ^ u64::from(me.pid) ^ crate::process::monotonic_ms() << 40;
        let h: &ArenaHeader = region.get(0);
        h.seed.store(seed, Ordering::Relaxed);
        h.capacity.store(cfg.capacity, Ordering::Relaxed);
        h.max_record.store(cfg.max_record, Ordering::Relaxed);
        h.index_entries.store(cfg.index_entries, Ordering::Relaxed);
        h.pin_rows.store(cfg.pin_rows, Ordering::Relaxed);
        h.pin_slots.store(cfg.pin_slots, Ordering::Relaxed);
        h.rings.store(cfg.rings, Ordering::Relaxed);
        h.geometry_check
            .store(cfg.checksum(seed), Ordering::Relaxed);
        h.claim.store(claim_word(me), Ordering::Relaxed);
        let map = Map::from_region(region)?;
        map.region.publish(ARENA_MAGIC);
        Ok(ArenaOwner {
            map: Arc::new(map),
            unlink_on_drop: true,
            pool: names.pool.clone(),
            cursor: 0,
        })
    }

    /// A reading view of the same mapping (the owner's own lookups, stats).
    pub fn arena(&self) -> Arena {
        Arena {
            map: Arc::clone(&self.map),
        }
    }

    pub fn usage(&self) -> Usage {
        self.map.usage()
    }

    fn h(&self) -> &ArenaHeader {
        self.map.header()
    }

    fn rings(&self) -> usize {
        self.map.cfg.rings as usize
    }

    fn head(&self, g: usize) -> u64 {
        self.h().ring[g].head.load(Ordering::Relaxed)
    }

    fn tail(&self, g: usize) -> u64 {
        self.h().ring[g].tail.load(Ordering::Relaxed)
    }

    fn set_head(&self, g: usize, at: u64) {
        self.h().ring[g].head.store(at, Ordering::Relaxed);
    }

    fn set_tail(&self, g: usize, at: u64) {
        self.h().ring[g].tail.store(at, Ordering::Relaxed);
    }

    /// Bytes of one ring.
    fn rc(&self) -> u64 {
        self.map.cfg.ring_capacity()
    }

    /// Physical offset of ring `g`'s position `at`.
    fn phys(&self, g: usize, at: u64) -> u64 {
        g as u64 * self.rc() + at % self.rc()
    }

    fn free(&self, g: usize) -> u64 {
        self.rc() - (self.tail(g) - self.head(g))
    }

    fn total_free(&self) -> u64 {
        (0..self.rings()).map(|g| self.free(g)).sum()
    }

    /// Bytes an append of `size` consumes at ring `g`'s tail (padding to its end included).
    fn need(&self, g: usize, size: u64) -> u64 {
        let tp = self.tail(g) % self.rc();
        if tp + size <= self.rc() {
            size
        } else {
            self.rc() - tp + size
        }
    }

    fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    fn next_generation(&self) -> u64 {
        let h = self.h();
        let mut g = h.next_generation.load(Ordering::Relaxed);
        loop {
            g += 1;
            if !matches!(g as u32, 0 | u32::MAX) {
                break;
            }
        }
        h.next_generation.store(g, Ordering::Relaxed);
        g
    }

    /// Reserves space for an object of `key`, `meta` and a body of `body_len` bytes, making
    /// room by eviction (with second chance).
    pub fn reserve(
        &mut self,
        key: &[u8],
        meta: &[u8],
        body_len: u64,
    ) -> Result<Reservation, ReserveError> {
        let too_large = |record| ReserveError::TooLarge {
            record,
            max: self.map.cfg.max_record,
        };
        let content = (OBJ + key.len() as u64 + meta.len() as u64).saturating_add(body_len);
        let size = align_up(content);
        let long = |n: usize| u32::try_from(n).is_err();
        if size > self.map.cfg.max_record || long(key.len()) || long(meta.len()) {
            return Err(too_large(size));
        }
        // Rings take turns; one whose head is held is passed over for the next.
        let reserve = self.map.cfg.reserve();
        let placed = (0..self.rings()).find_map(|k| {
            let g = (self.cursor + k) % self.rings();
            let mut budget = 2 * size;
            self.make_room(g, |o| o.need(g, size) + reserve, &mut budget)
                .and_then(|()| self.place(g, size))
                .ok()
                .map(|phys| (g, phys))
        });
        let Some((g, phys)) = placed else {
            Self::bump(&self.h().refused_busy, 1);
            return Err(ReserveError::Busy);
        };
        self.cursor = (g + 1) % self.rings();
        let mut rec = Rec {
            phys,
            generation: self.next_generation(),
            state: WRITING,
            size,
            key_hash: self.map.key_hash(key),
            body_len,
            key_len: key.len() as u32,
            meta_len: meta.len() as u32,
            body_sum: 0,
            check: 0,
        };
        self.map.copy_in(rec.key_at(), key);
        self.map.copy_in(rec.meta_at(), meta);
        rec.check = self.map.header_sum(&rec);
        self.write_header(&rec);
        self.set_tail(g, self.tail(g) + size);
        Ok(Reservation {
            map: Arc::clone(&self.map),
            rec,
            key: key.to_vec(),
            written: 0,
            sum: Sum::new(self.map.seed),
            done: false,
            exposed: false,
        })
    }

    fn write_header(&self, r: &Rec) {
        let o = self.map.obj(r.phys);
        o.generation.store(r.generation, Ordering::Relaxed);
        o.state.store(r.state, Ordering::Relaxed);
        o.flags.store(0, Ordering::Relaxed);
        o.size.store(r.size, Ordering::Relaxed);
        o.key_hash.store(r.key_hash, Ordering::Relaxed);
        o.body_len.store(r.body_len, Ordering::Relaxed);
        o.key_len.store(r.key_len, Ordering::Relaxed);
        o.meta_len.store(r.meta_len, Ordering::Relaxed);
        o.body_sum.store(r.body_sum, Ordering::Relaxed);
        o.check.store(r.check, Ordering::Relaxed);
    }

    /// Makes `size` contiguous bytes writable at ring `g`'s tail (padding to the ring's end if
    /// the record would cross it) and returns their physical offset. Refuses bytes a pin names.
    fn place(&mut self, g: usize, size: u64) -> Result<u64, ReserveError> {
        let pins = self.map.pinned_ranges();
        let base = g as u64 * self.rc();
        let mut tp = self.tail(g) % self.rc();
        if tp + size > self.rc() {
            let pad = self.rc() - tp;
            if any_in(&pins, base + tp, pad) {
                return Err(ReserveError::Busy);
            }
            let mut r = Rec {
                phys: base + tp,
                generation: 0,
                state: PAD,
                size: pad,
                key_hash: 0,
                body_len: 0,
                key_len: 0,
                meta_len: 0,
                body_sum: 0,
                check: 0,
            };
            r.check = self.map.header_sum(&r);
            self.write_header(&r);
            self.set_tail(g, self.tail(g) + pad);
            tp = 0;
        }
        if any_in(&pins, base + tp, size) {
            return Err(ReserveError::Busy);
        }
        Ok(base + tp)
    }

    /// Reclaims at ring `g`'s head until `target(self)` bytes are free in it. Second chances
    /// copy at most `budget` bytes (twice what the caller needs), so readers that keep touching
    /// every object cannot make the writer copy the whole cache for one insert.
    fn make_room(
        &mut self,
        g: usize,
        target: impl Fn(&Self) -> u64,
        budget: &mut u64,
    ) -> Result<(), ReserveError> {
        while self.free(g) < target(self) {
            self.reclaim_one(g, budget)?;
        }
        Ok(())
    }

    /// One step at ring `g`'s head: evict or give a second chance to a live record, or free
    /// garbage.
    fn reclaim_one(&mut self, g: usize, budget: &mut u64) -> Result<(), ReserveError> {
        let head = self.head(g);
        if head == self.tail(g) {
            return Err(ReserveError::Busy);
        }
        let Some(r) = self.map.record(self.phys(g, head)) else {
            // Our own records were validated when adopted and are written by us alone.
            log::error!("arena: unreadable record at the ring's head ({head})");
            return Err(ReserveError::Busy);
        };
        match r.state {
            LIVE => {
                let accessed = self.map.obj(r.phys).flags.load(Ordering::Relaxed) & ACCESSED;
                if accessed != 0 && *budget >= r.size && self.need(g, r.size) <= self.free(g) {
                    *budget -= r.size;
                    self.second_chance(g, &r)?;
                } else {
                    self.unlink(&r);
                    Self::bump(&self.h().evictions, 1);
                }
                Ok(())
            }
            WRITING | STREAMING => Err(ReserveError::Busy),
            _ => {
                // Retired (unlinked before this snapshot), abandoned or padding.
                // ORDERING: Acquire fence: a fill abandoned on another thread (Release store
                // of ABANDONED after its unlink) has its unlink ordered before our snapshot and
                // its last body write before our reuse.
                std::sync::atomic::fence(Ordering::Acquire);
                if any_in(&self.map.pinned_ranges(), r.phys, r.size) {
                    return Err(ReserveError::Busy);
                }
                // Pages a reader handed to a socket by reference may still sit in a socket
                // queue: give them back, so the socket keeps them with their bytes and our
                // next writes here get fresh pages ("Spliced pages"). Relaxed: the pin
                // snapshot above (SeqCst) saw every reader's Release clear of its slot.
                if self.map.obj(r.phys).flags.load(Ordering::Relaxed) & SPLICED != 0 {
                    let at = self.map.file_offset(r.body_at()) as usize;
                    if let Err(e) = self.map.region.remove_pages(at, r.body_len as usize) {
                        // Never write over pages a socket may hold: the ring waits.
                        log::error!("arena: spliced pages not given back: {e}");
                        return Err(ReserveError::Busy);
                    }
                }
                self.set_head(g, head + r.size);
                Ok(())
            }
        }
    }

    /// Copies the live record `r` to the tail as a new generation and moves its index entry.
    fn second_chance(&mut self, g: usize, r: &Rec) -> Result<(), ReserveError> {
        let phys = self.place(g, r.size)?;
        let src = self.map.ptr(r.phys, r.size);
        let dst = self.map.ptr(phys, r.size);
        // SAFETY: both ranges lie in the object space (`ptr` checks); `src` is a record at the
        // head that readers only read; `dst` is free space at the tail that `place` checked no
        // pin names and that nobody can reach until we link it; head and tail space are
        // disjoint because `need(size) <= free()`.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, r.size as usize) };
        let mut n = Rec {
            phys,
            generation: self.next_generation(),
            state: LIVE,
            ..*r
        };
        n.check = self.map.header_sum(&n);
        self.write_header(&n);
        self.set_tail(g, self.tail(g) + r.size);
        if let Some(e) = self.entry_of(r) {
            // ORDERING: SeqCst: the unlink of the old copy (module doc, writer step 3); a
            // reader's Acquire load of the new loc sees the copy.
            e.loc.store(n.loc(), Ordering::SeqCst);
        }
        self.map.obj(r.phys).state.store(RETIRED, Ordering::Relaxed);
        Self::bump(&self.h().second_chances, 1);
        Ok(())
    }

    /// The index entry naming record `r`, if any.
    fn entry_of(&self, r: &Rec) -> Option<&IndexEntry> {
        let base = self.map.bucket(r.key_hash);
        let l = r.loc();
        (base..base + WAYS)
            .map(|i| self.map.entry(i))
            .find(|e| e.loc.load(Ordering::Relaxed) == l)
    }

    /// Unlinks the live record `r` from the index and retires it (its space is reclaimed when
    /// the head reaches it and no pin names it).
    fn unlink(&self, r: &Rec) {
        if let Some(e) = self.entry_of(r) {
            // ORDERING: SeqCst: the unlink (module doc, writer step 3) precedes, in the single
            // total order, the pin snapshot that decides when the space may be reused.
            e.loc.store(0, Ordering::SeqCst);
        }
        self.retire(r);
    }

    /// Retires the live record `r` just unlinked. A `STREAMING` one (replaced, removed or
    /// evicted from its bucket while it is filled) is left to its [`Reservation`], which finds
    /// it unlinked when it ends; one that is no longer `LIVE` was never counted.
    fn retire(&self, r: &Rec) {
        let h = self.h();
        let o = self.map.obj(r.phys);
        // Only we make a record LIVE or take it out of LIVE: this load is stable.
        if o.state.load(Ordering::Relaxed) != LIVE {
            return;
        }
        o.state.store(RETIRED, Ordering::Relaxed);
        let sub = |a: &AtomicU64, n: u64| {
            a.store(
                a.load(Ordering::Relaxed).saturating_sub(n),
                Ordering::Relaxed,
            )
        };
        sub(&h.live_objects, 1);
        sub(&h.live_bytes, r.size);
    }

    /// The entry and record of the live object stored for `key`, if any.
    fn find(&self, key: &[u8], hash: u64) -> Option<(&IndexEntry, Rec)> {
        let base = self.map.bucket(hash);
        (base..base + WAYS).find_map(|i| {
            let e = self.map.entry(i);
            let l = e.loc.load(Ordering::Relaxed);
            if l == 0 || e.hash.load(Ordering::Relaxed) != hash {
                return None;
            }
            let r = self.map.record(loc_offset(l))?;
            (r.loc() == l && self.map.key_eq(&r, key)).then_some((e, r))
        })
    }

    /// Publishes a filled reservation: from now on readers find it, and it replaces the object
    /// stored before under the same key. Returns the object's generation.
    pub fn publish(&mut self, mut res: Reservation) -> Result<u64, PublishError> {
        assert!(
            Arc::ptr_eq(&res.map, &self.map),
            "a reservation of another arena"
        );
        if res.written != res.rec.body_len {
            return Err(PublishError::Incomplete {
                written: res.written,
                expected: res.rec.body_len,
            });
        }
        let r = Rec {
            state: LIVE,
            body_sum: res.sum.finish(),
            ..res.rec
        };
        let o = self.map.obj(r.phys);
        res.done = true;
        if res.exposed {
            let linked = self.entry_of(&res.rec).is_some();
            // ORDERING: Release, before the checksum replaces the committed length in
            // `body_sum`: a streaming reader that reads the checksum there re-reads the state
            // and sees this store (see `Pinned::fill`), and sees every body byte.
            o.state
                .store(if linked { LIVE } else { RETIRED }, Ordering::Release);
            // ORDERING: Release: a reader whose Acquire load reads the checksum here sees the
            // state stored above when it re-reads it.
            o.body_sum.store(r.body_sum, Ordering::Release);
            if !linked {
                // Removed or replaced while it was filled: its readers finish, nobody else
                // finds it, and its space is reclaimed once they let go.
                return Err(PublishError::Unlinked);
            }
        } else {
            o.body_sum.store(r.body_sum, Ordering::Relaxed);
            o.state.store(LIVE, Ordering::Relaxed);
        }
        let h = self.h();
        Self::bump(&h.live_objects, 1);
        Self::bump(&h.live_bytes, r.size);
        Self::bump(&h.insertions, 1);
        if !res.exposed {
            self.link(&res.key, &r);
        }
        Ok(r.generation)
    }

    /// Links a reservation in the index before its body is complete, as `STREAMING`: readers
    /// find it from now on (it replaces the object stored before under the same key) and read
    /// its body up to the length committed so far, which each [`Reservation::write`] advances;
    /// [`ArenaOwner::publish`] makes it `LIVE` in place, dropping it abandons it. For answers
    /// whose length is known (the reservation's), so a reader knows when it has all.
    pub fn expose(&mut self, res: &mut Reservation) {
        assert!(
            Arc::ptr_eq(&res.map, &self.map),
            "a reservation of another arena"
        );
        if res.exposed || res.done {
            return;
        }
        let o = self.map.obj(res.rec.phys);
        // Relaxed: the SeqCst store of the index entry in `link` publishes both.
        o.body_sum.store(res.written, Ordering::Relaxed);
        o.state.store(STREAMING, Ordering::Relaxed);
        res.exposed = true;
        let r = Rec {
            state: STREAMING,
            ..res.rec
        };
        self.link(&res.key, &r);
    }

    /// Gives back the pages of every ring's free space (from its tail round to its head, where
    /// nothing is linked and only the next appends write), except what a pin names: called
    /// after an idle period, so an arena that has wrapped keeps pages only for what it holds
    /// (the space eviction freed stays resident otherwise). Safe for the reason reuse is
    /// (module doc, writer step 5): giving pages back zeroes them, as writing would. The next
    /// appends fault them in again. Returns the bytes given back.
    pub fn trim_free(&mut self) -> u64 {
        let pins = self.map.pinned_ranges();
        let rc = self.rc();
        let mut given = 0;
        for g in 0..self.rings() {
            let (tail, free) = (self.tail(g), self.free(g));
            // In ring order from the tail: up to the ring's end, then from its start.
            let first = free.min(rc - tail % rc);
            for (start, len) in [(self.phys(g, tail), first), (g as u64 * rc, free - first)] {
                if len == 0 || any_in(&pins, start, len) {
                    continue;
                }
                let at = self.map.layout.space_offset + start as usize;
                match self.map.region.remove_pages(at, len as usize) {
                    Ok(n) => given += n as u64,
                    Err(e) => log::debug!("arena: free space not given back: {e}"),
                }
            }
        }
        given
    }

    /// The body of the live object stored for `key`, as `(length, checksum)`, if any: what
    /// the owner checks its own references against, without a pin (it alone writes) and
    /// without marking the object accessed (which would give it a second chance).
    pub fn body_of(&self, key: &[u8]) -> Option<(u64, u64)> {
        let hash = self.map.key_hash(key);
        self.find(key, hash)
            .filter(|(_, r)| r.state == LIVE)
            .map(|(_, r)| (r.body_len, r.body_sum))
    }

    /// Puts `r` into its bucket: over the same key's entry, a free way, or the oldest object.
    fn link(&self, key: &[u8], r: &Rec) {
        if let Some((e, old)) = self.find(key, r.key_hash) {
            // ORDERING: SeqCst: publishes the record (Release) and unlinks the old one
            // (module doc, writer steps 2 and 3) in one store.
            e.loc.store(r.loc(), Ordering::SeqCst);
            self.retire(&old);
            return;
        }
        let base = self.map.bucket(r.key_hash);
        let ways = (base..base + WAYS).map(|i| self.map.entry(i));
        let e = match ways.clone().find(|e| e.loc.load(Ordering::Relaxed) == 0) {
            Some(e) => e,
            None => {
                let e = ways
                    .min_by_key(|e| {
                        let l = e.loc.load(Ordering::Relaxed);
                        self.map.record(loc_offset(l)).map_or(0, |v| v.generation)
                    })
                    .expect("a bucket has ways");
                let l = e.loc.load(Ordering::Relaxed);
                // ORDERING: SeqCst: the unlink of the victim (module doc, writer step 3).
                e.loc.store(0, Ordering::SeqCst);
                if let Some(v) = self.map.record(loc_offset(l)).filter(|v| v.loc() == l) {
                    self.retire(&v);
                }
                Self::bump(&self.h().bucket_evictions, 1);
                e
            }
        };
        e.hash.store(r.key_hash, Ordering::Relaxed);
        // ORDERING: SeqCst (a Release): a reader's Acquire load of the loc sees the hash and
        // the record written before it.
        e.loc.store(r.loc(), Ordering::SeqCst);
    }

    /// PURGE: removes the object stored for `key`; no reader finds it from now on (readers
    /// already holding it finish their response). `true` if there was one.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        let hash = self.map.key_hash(key);
        match self.find(key, hash) {
            Some((e, r)) => {
                // ORDERING: SeqCst: the unlink (module doc, writer step 3).
                e.loc.store(0, Ordering::SeqCst);
                self.retire(&r);
                Self::bump(&self.h().removals, 1);
                true
            }
            None => false,
        }
    }

    /// Evicts (with second chance) and reclaims until `bytes` are free in all (at most the
    /// capacity), a step per ring in turn; `Busy` once every ring that could give more is held.
    pub fn evict_until(&mut self, bytes: u64) -> Result<(), ReserveError> {
        let want = bytes.min(self.map.cfg.capacity);
        let mut budget = 2 * want;
        let mut held = vec![false; self.rings()];
        while self.total_free() < want {
            if held.iter().all(|&h| h) {
                return Err(ReserveError::Busy);
            }
            for (g, held) in held.iter_mut().enumerate() {
                if !*held && self.reclaim_one(g, &mut budget).is_err() {
                    *held = true;
                }
            }
        }
        Ok(())
    }

    /// Walks the ring and the index and checks them against each other and the counters.
    pub fn audit(&self) -> Result<Audit, String> {
        let mut a = Audit::default();
        let mut live = HashMap::new();
        let mut streaming = std::collections::HashSet::new();
        for g in 0..self.rings() {
            let (mut at, tail) = (self.head(g), self.tail(g));
            while at < tail {
                let r = self
                    .map
                    .record(self.phys(g, at))
                    .filter(|r| at % self.rc() + r.size <= self.rc())
                    .ok_or(format!("bad record at {at} of ring {g}"))?;
                match r.state {
                    LIVE => {
                        if self.map.header_sum(&r) != r.check {
                            return Err(format!("checksum mismatch at {at} of ring {g}"));
                        }
                        a.live_objects += 1;
                        a.live_bytes += r.size;
                        live.insert(r.loc(), r);
                    }
                    WRITING => a.writing_bytes += r.size,
                    STREAMING => {
                        a.writing_bytes += r.size;
                        streaming.insert(r.loc());
                    }
                    RETIRED | ABANDONED | PAD => a.garbage_bytes += r.size,
                    s => return Err(format!("unknown state {s} at {at} of ring {g}")),
                }
                at += r.size;
            }
            if at != tail {
                return Err(format!("a record crosses the tail of ring {g}"));
            }
        }
        let mut linked = 0;
        for i in 0..self.map.cfg.index_entries as usize {
            let e = self.map.entry(i);
            let l = e.loc.load(Ordering::Relaxed);
            if l == 0 || streaming.contains(&l) {
                continue;
            }
            let r = live
                .get(&l)
                .ok_or(format!("index entry {i} names no live record"))?;
            if self.map.bucket(r.key_hash) != i / WAYS * WAYS
                || e.hash.load(Ordering::Relaxed) != r.key_hash
            {
                return Err(format!("index entry {i} is in the wrong bucket"));
            }
            linked += 1;
        }
        let u = self.usage();
        if linked != live.len() || u.live_objects != a.live_objects || u.live_bytes != a.live_bytes
        {
            return Err(format!(
                "{linked} linked, {} live records, counters say {} objects / {} bytes (walk: {})",
                live.len(),
                u.live_objects,
                u.live_bytes,
                a.live_bytes
            ));
        }
        Ok(a)
    }

    /// Adoption: validates every record from head to tail of every ring and the index against
    /// them, drops what fails, abandons fills the dead owner left, and resets the counters from
    /// the walk.
    fn repair(&mut self) -> Adoption {
        let mut rep = Adoption::default();
        let mut newest: HashMap<Vec<u8>, Rec> = HashMap::new();
        let mut max_gen = self.h().next_generation.load(Ordering::Relaxed);
        for g in 0..self.rings() {
            self.repair_ring(g, &mut rep, &mut newest, &mut max_gen);
        }
        self.after_repair(rep, newest, max_gen)
    }

    /// Walks ring `g`, collecting the newest live record of each key into `newest`.
    fn repair_ring(
        &mut self,
        g: usize,
        rep: &mut Adoption,
        newest: &mut HashMap<Vec<u8>, Rec>,
        max_gen: &mut u64,
    ) {
        let (head, tail) = (self.head(g), self.tail(g));
        let sane =
            head % ALIGN == 0 && tail % ALIGN == 0 && head <= tail && tail - head <= self.rc();
        let mut at = head;
        if !sane {
            // Positions we cannot trust: the ring restarts empty (bytes written into it later
            // are checked against the pins by `place`, so readers of old records are safe).
            rep.dropped += 1;
            let restart = tail / ALIGN * ALIGN;
            self.set_head(g, restart);
            self.set_tail(g, restart);
            at = restart;
        }
        let end = self.tail(g);
        while at < end {
            let r = match self.map.record(self.phys(g, at)) {
                Some(r)
                    if at + r.size <= end
                        && at % self.rc() + r.size <= self.rc()
                        && self.map.header_sum(&r) == r.check =>
                {
                    r
                }
                _ => {
                    // Nothing after an unreadable record can be trusted to start where it
                    // seems to: the tail moves back here. Bytes written there later are checked
                    // against the pins (`place`), so readers of the old records are safe.
                    rep.dropped += 1;
                    self.set_tail(g, at);
                    break;
                }
            };
            *max_gen = (*max_gen).max(r.generation);
            match r.state {
                LIVE if self.map.body_sum(&r) == r.body_sum => {
                    let mut key = Vec::new();
                    self.map.copy_out(r.key_at(), u64::from(r.key_len), |p| {
                        key.extend_from_slice(p)
                    });
                    // Two live copies of a key (a second chance cut short): the newest wins.
                    let lose = match newest.get(&key) {
                        Some(old) if old.generation > r.generation => r,
                        old => {
                            let old = old.copied();
                            newest.insert(key, r);
                            match old {
                                Some(old) => old,
                                None => {
                                    at += r.size;
                                    continue;
                                }
                            }
                        }
                    };
                    self.map
                        .obj(lose.phys)
                        .state
                        .store(RETIRED, Ordering::Relaxed);
                }
                LIVE => {
                    rep.dropped += 1;
                    self.map.obj(r.phys).state.store(RETIRED, Ordering::Relaxed);
                }
                WRITING | STREAMING => {
                    // A streaming fill's index entry goes with the others that name no
                    // live record (`after_repair`); its readers see it abandoned and stop.
                    rep.abandoned_fills += 1;
                    // ORDERING: Release, as in `Reservation::drop` (readers' Acquire).
                    self.map
                        .obj(r.phys)
                        .state
                        .store(ABANDONED, Ordering::Release);
                }
                _ => {}
            }
            at += r.size;
        }
    }

    /// Adoption, after the walk: the index, the counters and the pin rows.
    fn after_repair(
        &mut self,
        mut rep: Adoption,
        newest: HashMap<Vec<u8>, Rec>,
        max_gen: u64,
    ) -> Adoption {
        self.h().next_generation.store(max_gen, Ordering::Relaxed);
        // The index: keep an entry only if it names the newest live record of its key, in
        // its bucket; clear the rest, then link what is missing.
        let wanted: HashMap<u64, &Rec> = newest.values().map(|r| (r.loc(), r)).collect();
        let mut present = std::collections::HashSet::new();
        for i in 0..self.map.cfg.index_entries as usize {
            let e = self.map.entry(i);
            let l = e.loc.load(Ordering::Relaxed);
            if l == 0 {
                continue;
            }
            let ok = wanted.get(&l).is_some_and(|r| {
                self.map.bucket(r.key_hash) == i / WAYS * WAYS
                    && e.hash.load(Ordering::Relaxed) == r.key_hash
            }) && present.insert(l);
            if !ok {
                rep.dropped += 1;
                // ORDERING: SeqCst: an unlink (module doc, writer step 3).
                e.loc.store(0, Ordering::SeqCst);
            }
        }
        let h = self.h();
        h.live_objects.store(0, Ordering::Relaxed);
        h.live_bytes.store(0, Ordering::Relaxed);
        for (key, r) in &newest {
            Self::bump(&h.live_objects, 1);
            Self::bump(&h.live_bytes, r.size);
            if !present.contains(&r.loc()) {
                self.link(key, r);
            }
        }
        let u = self.usage();
        rep.objects = u.live_objects;
        rep.bytes = u.live_bytes;
        Self::bump(&h.corrupt_dropped, rep.dropped);
        Self::bump(&h.adoptions, 1);
        // Rows of dead readers (their master died too, or never released them).
        for row in 0..self.map.cfg.pin_rows {
            release_dead_row(&self.map, row, None);
        }
        // A predecessor that stopped but died before unlinking: readers that reopen find us.
        // ORDERING: Release pairs with readers' Acquire in `is_closed`.
        h.closed.store(0, Ordering::Release);
        rep
    }

    /// For tests: leaves the arena as a crashed owner would (name kept, owner dead).
    #[cfg(test)]
    fn crash(mut self) {
        self.unlink_on_drop = false;
        let me = ProcId::current();
        let dead = claim_word(ProcId {
            pid: me.pid,
            start: me.start + 1,
        });
        self.h().claim.store(dead, Ordering::Relaxed);
        self.h().region.owner_start.store(1, Ordering::Relaxed);
    }
}

fn claim_word(p: ProcId) -> u64 {
    (u64::from(p.pid) << 32) | (p.start & 0xffff_ffff)
}

/// Is the process a claim word names alive (same pid, same start time mod 2^32, no zombie)?
fn claim_alive(word: u64) -> bool {
    let pid = (word >> 32) as u32;
    pid != 0
        && crate::process::start_time(pid).is_some_and(|start| {
            claim_word(ProcId { pid, start }) == word && ProcId { pid, start }.alive()
        })
}

/// Takes the arena over from the dead owner whose claim word is `prev` (of adopters racing, the
/// one compare-and-swap that succeeds wins), then records us in the region header too (which
/// `ShmRegion::create` consults). `Err(pid)` names the winner.
fn claim(map: &Map, prev: u64) -> Result<(), u32> {
    let me = ProcId::current();
    let h = map.header();
    // ORDERING: AcqRel: Acquire sees the previous owner's last writes (it is dead, so they are
    // all done); Release publishes our claim to later adopters' Acquire load.
    h.claim
        .compare_exchange(prev, claim_word(me), Ordering::AcqRel, Ordering::Acquire)
        .map_err(|now| (now >> 32) as u32)?;
    h.region.owner_pid.store(me.pid, Ordering::Relaxed);
    h.region.owner_start.store(me.start, Ordering::Relaxed);
    Ok(())
}

impl Drop for ArenaOwner {
    /// A graceful stop: lets go of the arena, and unlinks it only if no master is alive to
    /// keep the instance (module doc, Lifetime).
    fn drop(&mut self) {
        if !self.unlink_on_drop {
            return;
        }
        let h = self.h();
        let me = claim_word(ProcId::current());
        // ORDERING: SeqCst, then the fence: step 1 (the release of the arena) precedes our
        // look at the pool in the total order the master's steps are in too.
        if h.claim
            .compare_exchange(me, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return; // no longer ours
        }
        fence(Ordering::SeqCst);
        if master_alive(&self.pool) {
            // Kept for our successor; the master unlinks it if none comes.
            log::info!(
                "cache arena {} kept for the next cached (the proxy master runs)",
                self.map.region.name()
            );
            return;
        }
        // ORDERING: SeqCst: step 3; an adopter that claimed it since wins and keeps it.
        if h.claim
            .compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            close_and_unlink(&self.map.region);
        }
    }
}

/// Is the segment pool `pool` published by a live proxy master?
fn master_alive(pool: &str) -> bool {
    ShmRegion::open(pool, crate::pool::POOL_MAGIC, crate::pool::POOL_VERSION)
        .is_ok_and(|r| r.header().owner().alive())
}

fn close_and_unlink(region: &ShmRegion) {
    let h: &ArenaHeader = region.get(0);
    // ORDERING: Release pairs with readers' Acquire in `is_closed`.
    h.closed.store(1, Ordering::Release);
    let _ = nix::sys::mman::shm_unlink(region.name());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Read, Write};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn names(tag: &str) -> Names {
        Names::for_instance(&format!("ar{}-{tag}", std::process::id()))
    }

    fn cfg(capacity: u64) -> ArenaConfig {
        ArenaConfig::for_capacity(capacity, 16 << 10, 4, 8)
    }

    fn owner(n: &Names, c: ArenaConfig) -> ArenaOwner {
        let (o, start) = ArenaOwner::open_or_adopt(n, c).unwrap();
        assert!(matches!(start, Start::Cold(_)), "{start:?}");
        o
    }

    /// The body stored for `key` at `version`: every byte depends on both, so a torn, stale or
    /// misplaced byte shows.
    fn body(key: &[u8], version: u64, len: usize) -> Vec<u8> {
        let mut s = Sum::new(version);
        s.update(key);
        let mut x = s.finish() | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn meta(version: u64, len: usize) -> Vec<u8> {
        [version.to_le_bytes(), (len as u64).to_le_bytes()].concat()
    }

    fn key(i: u64) -> Vec<u8> {
        format!("GET example.org /object/{i}").into_bytes()
    }

    fn put(o: &mut ArenaOwner, k: &[u8], version: u64, len: usize) -> Result<u64, ReserveError> {
        let b = body(k, version, len);
        let mut r = o.reserve(k, &meta(version, len), len as u64)?;
        // In pieces, as a fill arrives.
        for piece in b.chunks(1000) {
            assert_eq!(r.write(piece), piece.len());
        }
        assert_eq!(r.write(b"extra"), 0);
        Ok(o.publish(r).unwrap())
    }

    /// Is `k` stored? (Asked of the owner's index: no reader access bit is set.)
    fn stored(o: &ArenaOwner, k: &[u8]) -> bool {
        o.find(k, o.map.key_hash(k)).is_some()
    }

    /// The pinned object stored for `k` (it must be there).
    fn pin(reader: &ArenaReader, k: &[u8]) -> Pinned {
        match reader.lookup(k) {
            Lookup::Hit(p) => p,
            _ => panic!("{} is not stored", String::from_utf8_lossy(k)),
        }
    }

    /// Reads a hit whole and checks it against `body()`; `None` on a miss.
    fn get(reader: &ArenaReader, k: &[u8]) -> Option<u64> {
        match reader.lookup(k) {
            Lookup::Hit(p) => Some(verify(&p, k)),
            Lookup::Miss => None,
            Lookup::NoPinSlot => panic!("out of pin slots"),
        }
    }

    fn verify(p: &Pinned, k: &[u8]) -> u64 {
        let m = p.meta();
        assert_eq!(m.len(), 16);
        let version = u64::from_le_bytes(m[..8].try_into().unwrap());
        let len = u64::from_le_bytes(m[8..].try_into().unwrap());
        assert_eq!(p.body_len(), len);
        let mut got = vec![0u8; len as usize];
        let mut at = 0;
        while at < got.len() {
            let n = p.read_body(at as u64, &mut got[at..(at + 777).min(len as usize)]);
            assert!(n > 0);
            at += n;
        }
        assert_eq!(p.read_body(len, &mut [0u8; 8]), 0);
        assert!(got == body(k, version, len as usize), "body mismatch");
        version
    }

    /// Blocks (512 bytes) the arena's shared memory object holds in tmpfs.
    fn blocks(n: &Names) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/dev/shm{}", n.arena))
            .unwrap()
            .blocks()
    }

    #[test]
    fn trimming_gives_back_the_free_space_of_a_wrapped_arena_and_keeps_what_is_stored() {
        let n = names("trim");
        let mut o = owner(&n, cfg(1 << 20));
        let reader = o.arena().attach().unwrap();
        // Four times the capacity: every ring has wrapped, all of its space was written.
        for i in 0..400 {
            put(&mut o, &key(i), 1, 10_000).unwrap();
        }
        // Then half of it freed: pages that were written and hold nothing now.
        o.evict_until(o.map.cfg.capacity / 2).unwrap();
        let u = o.usage();
        assert!(u.evictions > 0);
        let free = u.capacity - u.used;
        let kept: Vec<u64> = (0..400).filter(|&i| stored(&o, &key(i))).collect();
        // A pinned object stays pinned through the trim, whatever lies around it.
        let pinned = pin(&reader, &key(*kept.last().unwrap()));
        let before = blocks(&n);
        let given = o.trim_free();
        let after = blocks(&n);
        assert!(
            given >= free.saturating_sub(u64::from(o.map.cfg.rings) * 2 * 4096),
            "{given} of {free} free bytes given back"
        );
        // What stays is the index, the pins and the space between heads and tails (plus
        // the pages a ring's ends share with it).
        let edges = u64::from(o.map.cfg.rings) * 2 * 4096;
        let bound = o.map.layout.space_offset as u64 + u.used + edges;
        assert!(
            after < before && after * 512 <= bound,
            "{before} -> {after} blocks for {given} bytes; at most {bound} bytes may stay"
        );
        verify(&pinned, &key(*kept.last().unwrap()));
        drop(pinned);
        for &i in &kept {
            assert_eq!(get(&reader, &key(i)), Some(1), "object {i} after the trim");
        }
        // The space is written again as before.
        for i in 400..500 {
            put(&mut o, &key(i), 2, 10_000).unwrap();
            assert_eq!(get(&reader, &key(i)), Some(2));
        }
        o.audit().unwrap();
    }

    #[test]
    fn layout_is_pinned() {
        assert_eq!(std::mem::offset_of!(ArenaHeader, seed), 32);
        assert_eq!(std::mem::offset_of!(ArenaHeader, claim), 88);
        assert_eq!(std::mem::offset_of!(ArenaHeader, ring), 184);
        assert_eq!(size_of::<ArenaHeader>(), 184 + 16 * 16);
        assert_eq!(std::mem::offset_of!(ObjectHeader, state), 8);
        assert_eq!(std::mem::offset_of!(ObjectHeader, check), 56);
        let c = ArenaConfig::for_capacity(1 << 20, 4096, 2, 3);
        let l = c.layout();
        assert_eq!(l.index_offset, 512);
        assert_eq!(l.pins_offset, 512 + 512 * 16);
        assert_eq!(l.row_size, 128);
        assert_eq!(l.space_offset % 4096, 0);
        assert_eq!(l.len, l.space_offset + (1 << 20));
        assert_eq!(loc_offset(pack(4096, 7)), 4096);
        assert_eq!(loc_gen(pack(4096, (1 << 32) + 7)), 7);
    }

    #[test]
    fn handles_cross_threads() {
        fn send<T: Send>() {}
        fn sync<T: Sync>() {}
        // cached fills reservations on other threads than the one holding the owner; worker
        // threads share a reader and keep pins in connection state.
        send::<ArenaOwner>();
        send::<Reservation>();
        send::<ArenaReader>();
        sync::<ArenaReader>();
        send::<Pinned>();
        sync::<Arena>();
    }

    #[test]
    fn geometries_are_checked() {
        assert!(cfg(1 << 20).check().is_ok());
        let bad = [
            ArenaConfig {
                max_record: 100,
                ..cfg(1 << 20)
            },
            ArenaConfig {
                capacity: (1 << 20) + 1,
                ..cfg(1 << 20)
            },
            ArenaConfig {
                capacity: 32 << 10,
                ..cfg(1 << 20)
            },
            ArenaConfig {
                index_entries: 12,
                ..cfg(1 << 20)
            },
            ArenaConfig {
                pin_rows: 0,
                ..cfg(1 << 20)
            },
            ArenaConfig {
                pin_slots: MAX_PIN_SLOTS + 1,
                ..cfg(1 << 20)
            },
        ];
        for c in bad {
            assert!(c.check().is_err(), "{c:?}");
        }
    }

    #[test]
    fn a_published_object_is_found_whole_and_nothing_before() {
        let n = names("basic");
        let mut o = owner(&n, cfg(1 << 20));
        let arena = Arena::open(&n).unwrap();
        let reader = arena.attach().unwrap();
        let k = key(1);
        let mut r = o.reserve(&k, &meta(1, 5000), 5000).unwrap();
        r.write(&body(&k, 1, 5000));
        assert_eq!(get(&reader, &k), None, "visible before publish");
        o.publish(r).unwrap();
        assert_eq!(get(&reader, &k), Some(1));
        assert_eq!(get(&reader, &key(2)), None);
        put(&mut o, &key(3), 1, 0).unwrap();
        assert_eq!(get(&reader, &key(3)), Some(1), "an empty body");
        let u = o.usage();
        assert_eq!((u.live_objects, u.insertions), (2, 2));
        o.audit().unwrap();
        // A pin outlives the handle it was taken through; the row is freed after both.
        let Lookup::Hit(p) = reader.lookup(&k) else {
            panic!("miss")
        };
        drop(reader);
        assert_eq!(
            arena.map.row(0).owner_pid.load(Ordering::Relaxed),
            std::process::id()
        );
        assert_eq!(verify(&p, &k), 1);
        drop(p);
        assert_eq!(arena.map.row(0).owner_pid.load(Ordering::Relaxed), 0);
        // A graceful stop tells readers to reopen.
        assert!(!arena.is_closed());
        drop(o);
        assert!(arena.is_closed());
        assert!(matches!(Arena::open(&n), Err(ShmError::Missing(_))));
    }

    /// While a master's pool is published, a graceful stop keeps the arena (readers go on,
    /// the successor adopts it); the master's exit then unlinks it; without a master the stop
    /// unlinks it itself.
    #[test]
    fn a_graceful_stop_keeps_the_arena_while_the_master_lives_and_the_last_one_out_unlinks_it() {
        let n = names("keep");
        let mut pool = crate::pool::Pool::create(&n, 1, 4096, 4).unwrap();
        let mut o = owner(&n, cfg(1 << 20));
        put(&mut o, b"k", 1, 3000).unwrap();
        let reader = o.arena().attach().unwrap();
        drop(o);
        assert!(!reader.is_closed(), "kept: readers go on");
        assert_eq!(get(&reader, b"k"), Some(1));
        // A live owner keeps it from the master.
        let (o, start) = ArenaOwner::open_or_adopt(&n, cfg(1 << 20)).unwrap();
        assert!(
            matches!(start, Start::Adopted(ref a) if a.objects == 1),
            "{start:?}"
        );
        pool.unlink_name();
        assert!(!Arena::unlink_unowned(&n));
        assert!(!reader.is_closed());
        // With no master, the owner's stop unlinks it.
        drop(o);
        assert!(reader.is_closed());
        assert!(matches!(Arena::open(&n), Err(ShmError::Missing(_))));

        // Kept by a stop, then unlinked by the master's exit.
        let pool = crate::pool::Pool::create(&n, 1, 4096, 4).unwrap();
        let o = owner(&n, cfg(1 << 20));
        drop(o);
        let arena = Arena::open(&n).unwrap();
        drop(pool);
        assert!(Arena::unlink_unowned(&n));
        assert!(arena.is_closed());
        assert!(matches!(Arena::open(&n), Err(ShmError::Missing(_))));
        assert!(!Arena::unlink_unowned(&n), "nothing left to unlink");
    }

    #[test]
    fn a_body_is_sent_to_a_socket_straight_from_the_arena() {
        let n = names("send");
        let mut o = owner(&n, cfg(1 << 20));
        let reader = o.arena().attach().unwrap();
        put(&mut o, &key(1), 9, 12_000).unwrap();
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let p = pin(&reader, &key(1));
        let mut at = 0;
        use std::os::fd::AsFd;
        let mut got = Vec::new();
        while at < p.body_len() {
            at += p.send_body(a.as_fd(), at, u64::MAX).unwrap() as u64;
            let mut buf = [0u8; 65536];
            let n = b.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(p.send_body(a.as_fd(), at, u64::MAX).unwrap(), 0);
        assert!(got == body(&key(1), 9, 12_000));
        // A range: nothing past `end` goes.
        assert_eq!(p.send_body(a.as_fd(), 100, 150).unwrap(), 50);
        let mut part = [0u8; 50];
        b.read_exact(&mut part).unwrap();
        assert!(part[..] == body(&key(1), 9, 12_000)[100..150]);
        assert_eq!(p.send_body(a.as_fd(), 150, 150).unwrap(), 0);
        // A head and a range in one call.
        assert_eq!(
            p.send_head_and_body(a.as_fd(), b"HEAD\r\n", 200, 260, false)
                .unwrap(),
            66
        );
        let mut both = [0u8; 66];
        b.read_exact(&mut both).unwrap();
        assert_eq!(&both[..6], b"HEAD\r\n");
        assert!(both[6..] == body(&key(1), 9, 12_000)[200..260]);
        assert_eq!(
            p.send_head_and_body(a.as_fd(), b"", 12_000, u64::MAX, false)
                .unwrap(),
            0
        );
        let (ptr, len) = p.body_raw();
        assert_eq!(len, 12_000);
        assert!(!ptr.is_null());
    }

    /// A connected loopback TCP pair (sendfile hands pages to TCP by reference).
    fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        use nix::sys::socket::{setsockopt, sockopt};
        setsockopt(&a, sockopt::SndBuf, &(64 << 10)).unwrap();
        setsockopt(&b, sockopt::RcvBuf, &(64 << 10)).unwrap();
        (a, b)
    }

    #[test]
    fn spliced_pages_keep_their_bytes_in_a_socket_after_the_space_is_reused() {
        let n = names("splice");
        let c = ArenaConfig::for_capacity(4 << 20, 1 << 20, 4, 8);
        let mut o = owner(&n, c);
        let reader = o.arena().attach().unwrap();
        let len = 700_000;
        put(&mut o, &key(1), 9, len).unwrap();
        let (a, mut b) = tcp_pair();
        use std::os::fd::AsFd;
        // Sent, never read yet: what the socket took sits in its queues, by reference.
        let p = pin(&reader, &key(1));
        let mut sent = p
            .send_head_and_body(a.as_fd(), b"HEAD\r\n", 0, u64::MAX, false)
            .unwrap()
            - 6;
        // Until the socket is full (small buffers): a full socket is `WouldBlock`, never
        // `Ok(0)`, which would mean the body's end.
        let mut full = false;
        while sent < len {
            match p.send_body(a.as_fd(), sent as u64, u64::MAX) {
                Ok(0) => panic!("Ok(0) at {sent} of {len}"),
                Ok(k) => sent += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    full = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(full && sent < len, "sent {sent} of {len}");
        // Pages alone to a full socket: `WouldBlock` too.
        let (full_sock, _peer) = tcp_pair();
        while (&full_sock).write(&[0u8; 4096]).is_ok() {}
        let body_at = p.row.map.file_offset(p.rec.body_at());
        let aligned = body_at.next_multiple_of(PAGE as u64) - body_at + PAGE as u64;
        let e = p
            .send_body(full_sock.as_fd(), aligned, u64::MAX)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let flags = o.map.obj(p.rec.phys).flags.load(Ordering::Relaxed);
        assert!(flags & SPLICED != 0, "the body's pages went by reference");
        assert!(sent > PAGE * 2, "sent {sent}");
        drop(p);
        // Its space is reclaimed and written over, several times.
        for i in 2..40u64 {
            put(&mut o, &key(i), i, 300_000).unwrap();
        }
        assert!(!stored(&o, &key(1)));
        assert!(o.tail(0) > 3 * c.capacity, "wrapped several times");
        o.audit().unwrap();
        let mut got = vec![0u8; 6 + sent];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got[..6], b"HEAD\r\n");
        let want = body(&key(1), 9, len);
        let bad = (0..sent).filter(|&i| got[6 + i] != want[i]).count();
        assert_eq!(
            bad, 0,
            "bytes changed in the socket after the space was reused"
        );
        // Small bodies are copied: no flag, same bytes.
        put(&mut o, &key(100), 1, 20_000).unwrap();
        let p = pin(&reader, &key(100));
        assert_eq!(p.send_body(a.as_fd(), 0, 5000).unwrap(), 5000);
        let flags = o.map.obj(p.rec.phys).flags.load(Ordering::Relaxed);
        assert_eq!(flags & SPLICED, 0);
        let mut part = vec![0u8; 5000];
        b.read_exact(&mut part).unwrap();
        assert!(part[..] == body(&key(100), 1, 20_000)[..5000]);
    }

    #[test]
    fn unfinished_reservations_free_their_space() {
        let n = names("abandon");
        let mut o = owner(&n, cfg(256 << 10));
        let mut r = o.reserve(&key(1), b"m", 100).unwrap();
        r.write(&[1; 60]);
        assert_eq!(
            o.publish(r).err(),
            Some(PublishError::Incomplete {
                written: 60,
                expected: 100
            })
        );
        let r = o.reserve(&key(2), b"m", 100).unwrap();
        // A fill in progress holds the head.
        assert_eq!(o.evict_until(256 << 10), Err(ReserveError::Busy));
        drop(r);
        o.evict_until(256 << 10).unwrap();
        assert_eq!(o.usage().used, 0);
        let reader = o.arena().attach().unwrap();
        assert_eq!(get(&reader, &key(1)), None);
        assert_eq!(get(&reader, &key(2)), None);
        assert!(matches!(
            o.reserve(&key(3), b"", 16 << 10),
            Err(ReserveError::TooLarge { .. })
        ));
    }

    /// Writes `b` into `r` in pieces of `piece` bytes.
    fn write_all(r: &mut Reservation, b: &[u8], piece: usize) {
        for p in b.chunks(piece) {
            assert_eq!(r.write(p), p.len());
        }
    }

    /// The readable body of `p` now.
    fn readable_now(p: &Pinned) -> Vec<u8> {
        let mut got = vec![0u8; p.body_len() as usize + 8];
        let n = p.read_body(0, &mut got);
        got.truncate(n);
        got
    }

    #[test]
    fn an_exposed_fill_streams_up_to_its_committed_length_and_is_published_in_place() {
        let n = names("stream");
        let mut o = owner(&n, cfg(1 << 20));
        let reader = o.arena().attach().unwrap();
        let k = key(1);
        let b = body(&k, 1, 5000);
        let mut res = o.reserve(&k, &meta(1, 5000), 5000).unwrap();
        o.expose(&mut res);
        let p = pin(&reader, &k);
        assert_eq!((p.fill(), p.body_len()), (Fill::Partial(0), 5000));
        assert_eq!(p.read_body(0, &mut [0u8; 64]), 0, "nothing committed yet");
        write_all(&mut res, &b[..1000], 300);
        assert_eq!(p.fill(), Fill::Partial(1000));
        assert!(readable_now(&p) == b[..1000], "exactly the committed bytes");
        assert_eq!(p.read_body(1000, &mut [0u8; 64]), 0);
        assert_eq!(p.body_raw().1, 1000);
        // Streaming records are linked, not yet counted live.
        let a = o.audit().unwrap();
        assert_eq!((a.live_objects, a.writing_bytes > 0), (0, true));
        write_all(&mut res, &b[1000..], 700);
        assert_eq!(p.fill(), Fill::Complete, "all committed");
        let generation = o.publish(res).unwrap();
        assert_eq!(generation, p.generation(), "published in place");
        assert_eq!(p.fill(), Fill::Complete);
        assert_eq!(verify(&p, &k), 1);
        drop(p);
        assert_eq!(get(&reader, &k), Some(1));
        assert_eq!(o.usage().live_objects, 1);
        o.audit().unwrap();
    }

    #[test]
    fn an_abandoned_fill_stops_its_readers_and_frees_its_space() {
        let n = names("sabandon");
        let mut o = owner(&n, cfg(256 << 10));
        let reader = o.arena().attach().unwrap();
        let k = key(1);
        put(&mut o, &k, 1, 3000).unwrap();
        let mut res = o.reserve(&k, &meta(2, 3000), 3000).unwrap();
        o.expose(&mut res);
        assert_eq!(
            o.usage().live_objects,
            0,
            "the exposed fill replaced the old object"
        );
        write_all(&mut res, &body(&k, 2, 3000)[..100], 100);
        let p = pin(&reader, &k);
        assert_eq!(p.fill(), Fill::Partial(100));
        drop(res);
        assert_eq!(p.fill(), Fill::Abandoned);
        assert_eq!(p.read_body(0, &mut [0u8; 64]), 0, "nothing more is read");
        assert_eq!(get(&reader, &k), None, "unlinked");
        o.audit().unwrap();
        // The pinned record holds its ring; once let go, everything is reclaimed.
        assert_eq!(o.evict_until(256 << 10), Err(ReserveError::Busy));
        drop(p);
        o.evict_until(256 << 10).unwrap();
        assert_eq!(o.usage().used, 0);
        o.audit().unwrap();
    }

    #[test]
    fn a_fill_removed_or_replaced_while_streaming_is_not_published_and_its_readers_finish() {
        let n = names("sremove");
        let mut o = owner(&n, cfg(256 << 10));
        let reader = o.arena().attach().unwrap();
        let k = key(1);
        let b = body(&k, 3, 4000);
        let mut res = o.reserve(&k, &meta(3, 4000), 4000).unwrap();
        o.expose(&mut res);
        write_all(&mut res, &b[..2000], 1000);
        let p = pin(&reader, &k);
        assert!(o.remove(&k), "a PURGE finds the streaming object");
        assert_eq!(get(&reader, &k), None);
        o.audit().unwrap();
        write_all(&mut res, &b[2000..], 1000);
        assert_eq!(o.publish(res), Err(PublishError::Unlinked));
        assert_eq!(verify(&p, &k), 3, "a reader that had it finishes");
        assert_eq!(o.usage().live_objects, 0);
        o.audit().unwrap();
        drop(p);
        // Replaced by a newer object of its key (or its bucket's eviction): the same.
        let mut res = o.reserve(&k, &meta(4, 4000), 4000).unwrap();
        o.expose(&mut res);
        put(&mut o, &k, 9, 100).unwrap();
        write_all(&mut res, &body(&k, 4, 4000), 4000);
        assert_eq!(o.publish(res), Err(PublishError::Unlinked));
        assert_eq!(get(&reader, &k), Some(9));
        assert_eq!(o.usage().live_objects, 1);
        o.audit().unwrap();
        o.evict_until(256 << 10).unwrap();
        assert_eq!(o.usage().used, 0);
    }

    #[test]
    fn an_adopter_abandons_a_streaming_fill_and_its_readers_stop() {
        let n = names("sadopt");
        let c = cfg(256 << 10);
        let mut o = owner(&n, c);
        put(&mut o, &key(1), 1, 1000).unwrap();
        let mut res = o.reserve(&key(2), &meta(1, 1000), 1000).unwrap();
        o.expose(&mut res);
        res.write(&[7; 10]);
        let reader = o.arena().attach().unwrap();
        let p = pin(&reader, &key(2));
        std::mem::forget(res);
        o.crash();
        let (o, start) = ArenaOwner::open_or_adopt(&n, c).unwrap();
        let Start::Adopted(a) = start else {
            panic!("{start:?}")
        };
        assert_eq!((a.objects, a.abandoned_fills, a.dropped), (1, 1, 1));
        assert_eq!(p.fill(), Fill::Abandoned);
        assert_eq!(get(&reader, &key(2)), None);
        assert_eq!(get(&reader, &key(1)), Some(1));
        o.audit().unwrap();
    }

    #[test]
    fn the_ring_wraps_and_evicts_oldest_first() {
        let n = names("ring");
        // Buckets enough that none overflows (its oldest would go out of ring order): the
        // default 64 entries for 128 KiB let ~28 live objects fill one of 8 buckets now and
        // then (the hash seed is random).
        let c = ArenaConfig {
            index_entries: 1024,
            ..cfg(128 << 10)
        };
        let mut o = owner(&n, c);
        let reader = o.arena().attach().unwrap();
        let mut sizes = Sum::new(3);
        for i in 0..400u64 {
            sizes.u64(i);
            let len = (sizes.finish() % 9000) as usize;
            put(&mut o, &key(i), i, len).unwrap();
            o.audit().unwrap();
            assert!(stored(&o, &key(i)), "the newest is stored");
        }
        let u = o.usage();
        assert_eq!(c.rings, 1);
        assert!(o.tail(0) > 3 * c.capacity, "wrapped several times");
        assert!(u.evictions > 300);
        assert!(u.used <= c.capacity - c.reserve(), "the reserve stays free");
        // FIFO without accesses: what is left is a suffix of the insertion order.
        let present: Vec<bool> = (0..400).map(|i| stored(&o, &key(i))).collect();
        let first = present.iter().position(|&p| p).unwrap();
        assert!(present[first..].iter().all(|&p| p), "{present:?}");
        assert_eq!((400 - first) as u64, o.usage().live_objects);
        for i in first as u64..400 {
            assert_eq!(get(&reader, &key(i)), Some(i));
        }
    }

    #[test]
    fn small_records_fill_the_space_but_for_a_small_reserve() {
        // Records up to 256 KiB in one 1 MiB ring: the second-chance reserve is a 64th of the
        // ring, not a record of the largest size (which would keep a quarter empty).
        let n = names("fill");
        let c = ArenaConfig {
            index_entries: 4096,
            ..ArenaConfig::for_capacity(1 << 20, 256 << 10, 4, 8)
        };
        assert_eq!((c.rings, c.reserve()), (1, 16 << 10));
        let mut o = owner(&n, c);
        for i in 0..1000 {
            put(&mut o, &key(i), 1, 4000).unwrap();
        }
        let u = o.usage();
        assert!(u.evictions > 700, "{u:?}");
        let record = u.live_bytes / u.live_objects;
        assert!(
            u.live_bytes + c.reserve() + 2 * record >= c.capacity,
            "only {} of {} bytes hold objects: {u:?}",
            u.live_bytes,
            c.capacity
        );
        o.audit().unwrap();
    }

    #[test]
    fn accessed_objects_get_a_second_chance() {
        let n = names("clock");
        let c = ArenaConfig {
            index_entries: 1024,
            ..cfg(128 << 10)
        };
        let mut o = owner(&n, c);
        let reader = o.arena().attach().unwrap();
        // Records of 1920 bytes fill the space but for the reserve (2 KiB, a 64th of the
        // ring, so a record fits in it); touch the even ones of the first 40.
        assert_eq!(c.reserve(), 2048);
        let record = align_up(OBJ + key(99).len() as u64 + meta(1, 1800).len() as u64 + 1800);
        assert_eq!(record, 1920);
        let fill = (c.capacity - c.reserve()) / record;
        for i in 0..fill {
            put(&mut o, &key(i), 1, 1800).unwrap();
        }
        assert_eq!(o.usage().evictions, 0);
        for i in (0..40).step_by(2) {
            assert!(get(&reader, &key(i)).is_some());
        }
        // Twenty more inserts force about twenty evictions from the head.
        for i in 1000..1020 {
            put(&mut o, &key(i), 1, 1800).unwrap();
        }
        let u = o.usage();
        assert!(u.evictions >= 18 && u.second_chances >= 18, "{u:?}");
        for i in (0..40).step_by(2) {
            assert_eq!(get(&reader, &key(i)), Some(1), "touched object {i} evicted");
        }
        // Only untouched objects went, oldest first.
        let gone: Vec<u64> = (0..fill)
            .filter(|&i| get(&reader, &key(i)).is_none())
            .collect();
        assert_eq!(gone.len() as u64, u.evictions);
        // (The untouched ones after the first 40 follow, if the padding at the ring's end
        // took a record's room.)
        let order: Vec<u64> = (0..40).filter(|i| i % 2 == 1).chain(40..fill).collect();
        assert_eq!(gone, order[..gone.len()], "{gone:?}");
        o.audit().unwrap();
    }

    #[test]
    fn remove_hides_at_once_and_pinned_readers_finish() {
        let n = names("purge");
        let c = cfg(128 << 10);
        let mut o = owner(&n, c);
        let reader = o.arena().attach().unwrap();
        put(&mut o, &key(1), 1, 6000).unwrap();
        put(&mut o, &key(2), 1, 6000).unwrap();
        let p = pin(&reader, &key(1));
        assert!(o.remove(&key(1)));
        assert!(!o.remove(&key(1)));
        assert_eq!(get(&reader, &key(1)), None, "purged but still found");
        // The pinned copy is intact, and its space is not reused.
        // It is at the head: reclamation stops there, and so does eviction.
        assert_eq!(o.evict_until(c.capacity), Err(ReserveError::Busy));
        assert_eq!(get(&reader, &key(2)), Some(1));
        let stored = (10..40).filter(|&i| put(&mut o, &key(i), 1, 6000).is_ok());
        assert!(stored.count() < 30, "the ring went past a pinned record");
        assert!(o.usage().refused_busy > 0);
        assert_eq!(verify(&p, &key(1)), 1);
        drop(p);
        o.evict_until(c.capacity).unwrap();
        assert_eq!(o.usage().used, 0);
        assert_eq!(o.usage().removals, 1);
        o.audit().unwrap();
    }

    #[test]
    fn threads_of_one_worker_share_its_pin_row() {
        let n = names("threads");
        let c = ArenaConfig {
            pin_slots: 3,
            ..ArenaConfig::for_capacity(512 << 10, 16 << 10, 2, 3)
        };
        let mut o = owner(&n, c);
        let reader = o.arena().attach().unwrap();
        for i in 0..32 {
            put(&mut o, &key(i), 0, 3000).unwrap();
        }
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (hits, no_slot) = (AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|sc| {
            for t in 0..4u64 {
                let (reader, stop, hits, no_slot) = (&reader, &stop, &hits, &no_slot);
                sc.spawn(move || {
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        i = (i * 7 + 3) % 32;
                        match reader.lookup(&key(i)) {
                            Lookup::Hit(p) => {
                                verify(&p, &key(i));
                                hits.fetch_add(1, Ordering::Relaxed);
                            }
                            Lookup::NoPinSlot => {
                                no_slot.fetch_add(1, Ordering::Relaxed);
                            }
                            Lookup::Miss => {}
                        }
                    }
                });
            }
            let t = Instant::now();
            let mut v = 1;
            while v < 2000 || t.elapsed() < Duration::from_millis(300) {
                v += 1;
                let _ = put(&mut o, &key(v % 32), v, (v as usize * 37) % 9000);
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert!(hits.load(Ordering::Relaxed) > 100);
        // Four threads, three slots: some lookups find none free, and say so.
        eprintln!("no free slot {} times", no_slot.load(Ordering::Relaxed));
        o.audit().unwrap();
        assert!(
            (0..3).all(|s| o.map.slot(0, s).0.load(Ordering::Relaxed) == 0),
            "a pin was left behind"
        );
    }

    #[test]
    fn a_pinned_head_holds_up_its_ring_only() {
        let n = names("rings");
        let c = ArenaConfig {
            rings: 4,
            ..ArenaConfig::for_capacity(256 << 10, 16 << 10, 4, 8)
        };
        let mut o = owner(&n, c);
        let reader = o.arena().attach().unwrap();
        // The first object opens ring 0; pin it and purge everything.
        for i in 0..8 {
            put(&mut o, &key(i), 1, 5000).unwrap();
        }
        let p = pin(&reader, &key(0));
        assert_eq!(p.rec.phys, 0);
        for i in 0..8 {
            o.remove(&key(i));
        }
        // Many laps of the other rings later, inserts still succeed and the pin is intact.
        for i in 100..300 {
            put(&mut o, &key(i), 1, 5000).unwrap();
        }
        assert_eq!(o.usage().refused_busy, 0);
        assert_eq!(verify(&p, &key(0)), 1);
        assert!(o.tail(1) > 4 * c.ring_capacity());
        assert_eq!(o.head(0), 0, "ring 0 waits for the pin");
        drop(p);
        for i in 300..400 {
            put(&mut o, &key(i), 1, 5000).unwrap();
        }
        assert!(o.head(0) > 0);
        o.audit().unwrap();
    }

    #[test]
    fn storing_a_key_again_replaces_it() {
        let n = names("replace");
        let mut o = owner(&n, cfg(256 << 10));
        let reader = o.arena().attach().unwrap();
        put(&mut o, &key(1), 1, 3000).unwrap();
        let old = pin(&reader, &key(1));
        put(&mut o, &key(1), 2, 5000).unwrap();
        assert_eq!(get(&reader, &key(1)), Some(2));
        assert_eq!(
            verify(&old, &key(1)),
            1,
            "the reader of the old copy finishes it"
        );
        drop(old);
        assert_eq!(o.usage().live_objects, 1);
        o.audit().unwrap();
    }

    #[test]
    fn a_full_bucket_evicts_its_oldest() {
        let n = names("bucket");
        let c = ArenaConfig {
            index_entries: WAYS as u32,
            ..cfg(256 << 10)
        };
        let mut o = owner(&n, c);
        let reader = o.arena().attach().unwrap();
        for i in 0..=WAYS as u64 {
            put(&mut o, &key(i), 1, 100).unwrap();
        }
        assert_eq!(get(&reader, &key(0)), None);
        assert!((1..=WAYS as u64).all(|i| get(&reader, &key(i)).is_some()));
        assert_eq!(o.usage().bucket_evictions, 1);
        o.audit().unwrap();
    }

    #[test]
    fn pin_rows_and_slots_are_bounded_and_freed() {
        let n = names("rows");
        let c = ArenaConfig {
            pin_rows: 1,
            pin_slots: 2,
            ..cfg(256 << 10)
        };
        let mut o = owner(&n, c);
        put(&mut o, &key(1), 1, 10).unwrap();
        let arena = o.arena();
        let reader = arena.attach().unwrap();
        assert_eq!(arena.attach().err(), Some(AttachError::NoFreeRow(1)));
        let a = reader.lookup(&key(1));
        let b = reader.lookup(&key(1));
        assert!(matches!(reader.lookup(&key(1)), Lookup::NoPinSlot));
        assert!(matches!((&a, &b), (Lookup::Hit(_), Lookup::Hit(_))));
        // The master never releases the row of a live process, even when told its pid.
        assert_eq!(arena.release_worker(std::process::id()), 0);
        assert!(matches!(reader.lookup(&key(1)), Lookup::NoPinSlot));
        drop((a, b));
        assert!(matches!(reader.lookup(&key(1)), Lookup::Hit(_)));
        drop(reader);
        let reader = arena.attach().unwrap();
        // A row whose owner is dead is taken over.
        arena.map.row(0).owner_start.store(1, Ordering::Relaxed);
        std::mem::forget(reader);
        let again = arena.attach().unwrap();
        assert_eq!(again.row.row, 0);
    }

    #[test]
    fn a_live_owner_is_never_adopted() {
        let n = names("live");
        let _o = owner(&n, cfg(256 << 10));
        assert!(matches!(
            ArenaOwner::open_or_adopt(&n, cfg(256 << 10)),
            Err(ShmError::InUse { .. })
        ));
    }

    #[test]
    fn adoption_keeps_valid_objects_and_drops_corrupt_ones() {
        let n = names("adopt");
        let c = cfg(256 << 10);
        let mut o = owner(&n, c);
        for i in 0..10 {
            put(&mut o, &key(i), 7, 2000 + i as usize).unwrap();
        }
        // An unfinished fill, as a crash leaves it.
        let mut r = o.reserve(&key(50), b"m", 1000).unwrap();
        r.write(&[0; 10]);
        std::mem::forget(r);
        // Flip one body byte of object 3.
        let hash = o.map.key_hash(&key(3));
        let (_, rec) = o.find(&key(3), hash).unwrap();
        o.map
            .copy_in(rec.body_at() + 5, &[0x5a ^ body(&key(3), 7, 2003)[5]]);
        let reader_before = o.arena().attach().unwrap();
        o.crash();
        assert!(!reader_before.is_closed());
        let (mut o, start) = ArenaOwner::open_or_adopt(&n, c).unwrap();
        assert_eq!(
            start,
            Start::Adopted(Adoption {
                objects: 9,
                bytes: o.usage().live_bytes,
                dropped: 2, // the record and its index entry
                abandoned_fills: 1,
            })
        );
        let reader = o.arena().attach().unwrap();
        for i in 0..10 {
            assert_eq!(get(&reader, &key(i)), (i != 3).then_some(7), "object {i}");
        }
        assert_eq!(get(&reader_before, &key(4)), Some(7), "old readers go on");
        o.audit().unwrap();
        assert_eq!(o.usage().adoptions, 1);
        // The adopter goes on inserting over the abandoned fill's space.
        for i in 100..200 {
            put(&mut o, &key(i), 1, 3000).unwrap();
        }
        o.audit().unwrap();
        drop(reader_before);
        drop(reader);
        drop(o);
        assert!(matches!(Arena::open(&n), Err(ShmError::Missing(_))));
    }

    #[test]
    fn adoption_cuts_the_ring_at_a_corrupt_header() {
        let n = names("cut");
        let c = cfg(256 << 10);
        let mut o = owner(&n, c);
        for i in 0..10 {
            put(&mut o, &key(i), 7, 3000).unwrap();
        }
        let hash = o.map.key_hash(&key(6));
        let (_, rec) = o.find(&key(6), hash).unwrap();
        o.map.obj(rec.phys).meta_len.store(17, Ordering::Relaxed);
        // A reader holds object 8, which lies beyond the cut.
        let reader = o.arena().attach().unwrap();
        let p8 = pin(&reader, &key(8));
        o.crash();
        let (mut o, start) = ArenaOwner::open_or_adopt(&n, c).unwrap();
        let Start::Adopted(a) = start else {
            panic!("{start:?}")
        };
        assert_eq!(a.objects, 6);
        assert_eq!(a.dropped, 1 + 4, "the cut and the entries of objects 6..10");
        for i in 0..10 {
            assert_eq!(get(&reader, &key(i)), (i < 6).then_some(7), "object {i}");
        }
        // New objects are written over the dropped tail, but never over the pinned one.
        let mut refused = 0;
        for i in 100..140 {
            if put(&mut o, &key(i), 1, 3000).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 0);
        assert_eq!(verify(&p8, &key(8)), 7);
        drop(p8);
        for i in 200..240 {
            put(&mut o, &key(i), 1, 3000).unwrap();
        }
        o.audit().unwrap();
    }

    #[test]
    fn another_geometry_starts_cold_and_closes_the_old_arena() {
        let n = names("geom");
        let o = owner(&n, cfg(256 << 10));
        let old = o.arena();
        o.crash();
        let (_o, start) = ArenaOwner::open_or_adopt(&n, cfg(512 << 10)).unwrap();
        assert!(matches!(start, Start::Cold(ref why) if why.contains("geometry")));
        assert!(old.is_closed());
        assert_eq!(Arena::open(&n).unwrap().usage().capacity, 512 << 10);
    }

    // ---- model check of the pin protocol -----------------------------------------------

    /// One reader (two lookups) and the writer (two unlink-and-reuse cycles of one offset),
    /// each step one shared-memory access, under sequential consistency (the protocol's
    /// accesses are SeqCst). Values are generations; the offset holds `mem`'s bytes.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    struct M {
        entry: u8,
        pin: u8,
        mem: u8,
        w: u8,
        cycle: u8,
        snap: u8,
        r: u8,
        l: u8,
        tries: u8,
        lookups: u8,
    }

    const DONE: u8 = 99;
    const CYCLES: u8 = 2;

    /// The writer's next step; `scan_first` swaps its unlink and snapshot (a broken writer).
    fn writer_step(m: &mut M, scan_first: bool) {
        let (unlink, scan) = if scan_first { (1, 0) } else { (0, 1) };
        match m.w {
            w if w == unlink => {
                m.entry = 0;
                m.w += 1;
            }
            w if w == scan => {
                m.snap = m.pin;
                m.w += 1;
            }
            2 => m.w = if m.snap != 0 { scan } else { 3 },
            3 => {
                m.mem = m.cycle + 2;
                m.w = 4;
            }
            _ => {
                m.entry = m.cycle + 2;
                m.cycle += 1;
                m.w = if m.cycle == CYCLES { DONE } else { 0 };
            }
        }
        if scan_first && m.w == 2 && m.snap != 0 {
            m.w = 0; // retry the whole cycle: snapshot again, then unlink (already done)
        }
    }

    /// The reader's next step; `check_first` re-validates before pinning (a broken reader).
    /// Returns false if it read bytes of another generation than it pinned.
    fn reader_step(m: &mut M, check_first: bool) -> bool {
        let (pin, check) = if check_first { (2, 1) } else { (1, 2) };
        match m.r {
            0 => {
                m.l = m.entry;
                if m.l == 0 {
                    m.pin = 0;
                    m.r = 5;
                } else {
                    m.r = 1;
                }
            }
            r if r == pin => {
                m.pin = m.l;
                m.r += 1;
            }
            r if r == check => {
                if m.entry != m.l {
                    m.tries += 1;
                    m.r = 0;
                    if m.tries == 3 {
                        m.pin = 0;
                        m.r = 5;
                    }
                } else {
                    m.r += 1;
                }
            }
            3 | 4 => {
                if m.mem != m.l {
                    return false;
                }
                m.r += 1;
                if m.r == 5 {
                    m.pin = 0;
                }
            }
            _ => {
                m.lookups += 1;
                m.tries = 0;
                m.r = if m.lookups == 2 { DONE } else { 0 };
            }
        }
        true
    }

    /// Explores every interleaving; returns (states seen, whether a torn read is reachable).
    fn explore(check_first: bool, scan_first: bool) -> (usize, bool) {
        let start = M {
            entry: 1,
            pin: 0,
            mem: 1,
            w: 0,
            cycle: 0,
            snap: 0,
            r: 0,
            l: 0,
            tries: 0,
            lookups: 0,
        };
        let mut seen = std::collections::HashSet::from([start]);
        let mut todo = vec![start];
        let mut torn = false;
        while let Some(m) = todo.pop() {
            let mut next = Vec::new();
            if m.r != DONE {
                let mut n = m;
                if reader_step(&mut n, check_first) {
                    next.push(n);
                } else {
                    torn = true;
                }
            }
            if m.w != DONE {
                let mut n = m;
                writer_step(&mut n, scan_first);
                next.push(n);
            }
            if next.is_empty() && !torn {
                // Neither side is stuck, and a finished reader leaves no pin behind.
                assert_eq!((m.r, m.w, m.pin), (DONE, DONE, 0), "{m:?}");
            }
            for n in next {
                if seen.insert(n) {
                    todo.push(n);
                }
            }
        }
        (seen.len(), torn)
    }

    #[test]
    fn pin_protocol_is_safe_in_every_interleaving() {
        let (states, torn) = explore(false, false);
        assert!(!torn, "the reader read a reused object");
        assert!(states > 100, "explored only {states} states");
    }

    #[test]
    fn pin_protocol_check_catches_a_reader_that_validates_before_pinning() {
        assert!(explore(true, false).1);
    }

    #[test]
    fn pin_protocol_check_catches_a_writer_that_scans_before_unlinking() {
        assert!(explore(false, true).1);
    }

    // ---- model check of streaming (committed length, abandonment) ---------------------

    /// One streaming reader and the writer of one exposed record of `LEN` body bytes, each
    /// step one shared-memory access under sequential consistency. The writer writes a byte,
    /// then commits it; after any byte it may abandon the fill instead (unlink, state, wait
    /// for no pin, reuse the space for another generation). The reader pins the loc it found,
    /// re-validates it, then reads the state, the committed length, and bytes below it.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    struct S {
        entry: u8,
        hdr_gen: u8,
        state: u8,
        committed: u8,
        mem: [u8; LEN],
        pin: u8,
        snap: u8,
        w: u8,
        k: u8,
        r: u8,
        l: u8,
        c: u8,
        j: u8,
    }

    const LEN: usize = 3;
    const S_STREAMING: u8 = 1;
    const S_LIVE: u8 = 2;
    const S_ABANDONED: u8 = 3;

    /// How a broken side may differ from the protocol.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Flaw {
        None,
        /// The writer commits a byte before writing it.
        CommitFirst,
        /// The reader reads past the committed length.
        ReadPast,
        /// The writer reuses an abandoned record without waiting for pins.
        NoPinWait,
    }

    /// The writer's possible next steps.
    fn stream_writer(m: &S, flaw: Flaw) -> Vec<S> {
        let mut n = *m;
        let commit_first = flaw == Flaw::CommitFirst;
        match m.w {
            // Write byte k (or commit it first, if flawed).
            0 => {
                if commit_first {
                    n.committed = m.k + 1;
                } else {
                    n.mem[m.k as usize] = 1;
                }
                n.w = 1;
            }
            1 => {
                if commit_first {
                    n.mem[m.k as usize] = 1;
                } else {
                    n.committed = m.k + 1;
                }
                n.k += 1;
                n.w = if n.k as usize == LEN { 2 } else { 0 };
                if n.w == 0 {
                    // ... or abandon the fill here instead of going on.
                    let mut a = n;
                    a.w = 10;
                    return vec![n, a];
                }
            }
            2 => {
                n.state = S_LIVE;
                n.w = DONE;
            }
            10 => {
                n.entry = 0;
                n.w = 11;
            }
            11 => {
                n.state = S_ABANDONED;
                n.w = 12;
            }
            12 => {
                n.snap = m.pin;
                n.w = 13;
            }
            13 => {
                n.w = if m.snap != 0 && flaw != Flaw::NoPinWait {
                    12
                } else {
                    14
                }
            }
            _ => {
                // Reuse: another generation's header and bytes.
                n.hdr_gen = 2;
                n.state = S_STREAMING;
                n.committed = 0;
                n.mem = [2; LEN];
                n.w = DONE;
            }
        }
        vec![n]
    }

    /// The reader's next step; false if it read a byte that is not the fill's own.
    fn stream_reader(m: &mut S, flaw: Flaw) -> bool {
        match m.r {
            0 => {
                m.l = m.entry;
                m.r = if m.l == 0 { DONE } else { 1 };
            }
            1 => {
                m.pin = m.l;
                m.r = 2;
            }
            2 => {
                if m.entry != m.l {
                    m.pin = 0;
                    m.r = DONE;
                } else {
                    m.r = 3;
                }
            }
            3 => {
                // Validate: the header is the generation pinned.
                if m.hdr_gen != m.l {
                    m.pin = 0;
                    m.r = DONE;
                } else {
                    m.r = 4;
                }
            }
            4 => {
                if m.state == S_ABANDONED {
                    m.pin = 0;
                    m.r = DONE;
                } else {
                    m.r = 5;
                }
            }
            5 => {
                m.c = if flaw == Flaw::ReadPast {
                    LEN as u8
                } else {
                    m.committed
                };
                m.r = 6;
            }
            _ => {
                if m.j < m.c {
                    if m.mem[m.j as usize] != 1 {
                        return false;
                    }
                    m.j += 1;
                    if m.j as usize == LEN {
                        m.pin = 0;
                        m.r = DONE;
                        return true;
                    }
                }
                m.r = 4;
            }
        }
        true
    }

    /// Explores every interleaving; returns (states seen, whether a bad read is reachable).
    fn explore_stream(flaw: Flaw) -> (usize, bool) {
        let start = S {
            entry: 1,
            hdr_gen: 1,
            state: S_STREAMING,
            committed: 0,
            mem: [0; LEN],
            pin: 0,
            snap: 0,
            w: 0,
            k: 0,
            r: 0,
            l: 0,
            c: 0,
            j: 0,
        };
        let mut seen = std::collections::HashSet::from([start]);
        let mut todo = vec![start];
        let mut bad = false;
        while let Some(m) = todo.pop() {
            let mut next = Vec::new();
            if m.r != DONE {
                let mut n = m;
                if stream_reader(&mut n, flaw) {
                    next.push(n);
                } else {
                    bad = true;
                }
            }
            if m.w != DONE {
                next.extend(stream_writer(&m, flaw));
            }
            if next.is_empty() && !bad {
                // Both ended, no pin is left, and a reader that read all read a whole fill.
                assert_eq!((m.r, m.w, m.pin), (DONE, DONE, 0), "{m:?}");
                assert!(m.j as usize != LEN || m.state == S_LIVE, "{m:?}");
            }
            for n in next {
                if seen.insert(n) {
                    todo.push(n);
                }
            }
        }
        (seen.len(), bad)
    }

    #[test]
    fn streaming_is_safe_in_every_interleaving() {
        let (states, bad) = explore_stream(Flaw::None);
        assert!(
            !bad,
            "a streaming reader read past the committed length or a reused byte"
        );
        assert!(states > 100, "explored only {states} states");
    }

    #[test]
    fn streaming_check_catches_each_broken_step() {
        for flaw in [Flaw::CommitFirst, Flaw::ReadPast, Flaw::NoPinWait] {
            assert!(explore_stream(flaw).1);
        }
    }

    // ---- other processes ---------------------------------------------------------------

    const CHILD_ENV: &str = "SHMPROXY_ARENA_CHILD";
    const DEADLINE: Duration = Duration::from_secs(60);

    /// Runs the ignored test `name` of this binary as a child process for `instance`.
    fn spawn_child(name: &str, instance: &str, arg: &str) -> std::process::Child {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                name,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{instance} {arg}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    }

    fn child_args() -> (Names, u64) {
        let v = std::env::var(CHILD_ENV).expect("run by a parent test, not alone");
        let (inst, arg) = v.split_once(' ').unwrap();
        (Names::for_instance(inst), arg.parse().unwrap())
    }

    /// Waits a bounded time for a child; kills it past the deadline.
    fn wait_child(mut c: std::process::Child) -> (std::process::ExitStatus, String) {
        let t = Instant::now();
        let status = loop {
            if let Some(s) = c.try_wait().unwrap() {
                break s;
            }
            if t.elapsed() > DEADLINE {
                let _ = c.kill();
                break c.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        (status, out)
    }

    const KEYS: u64 = 48;

    /// Child: looks up random keys, verifying every hit's body, until the owner stops.
    #[test]
    #[ignore = "a child process of readers_in_other_processes_see_only_whole_objects"]
    fn reader_child() {
        let (n, _) = child_args();
        let arena = Arena::open(&n).unwrap();
        let reader = arena.attach().unwrap();
        let t = Instant::now();
        let (mut hits, mut misses) = (0u64, 0u64);
        let mut x = u64::from(std::process::id()) | 1;
        while !reader.is_closed() && t.elapsed() < DEADLINE {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match get(&reader, &key(x % KEYS)) {
                Some(_) => hits += 1,
                None => misses += 1,
            }
        }
        println!("hits {hits} misses {misses}");
    }

    #[test]
    fn readers_in_other_processes_see_only_whole_objects() {
        let n = names("xproc");
        let c = ArenaConfig::for_capacity(256 << 10, 8 << 10, 4, 4);
        assert_eq!(c.rings, 2);
        let mut o = owner(&n, c);
        for i in 0..KEYS {
            put(&mut o, &key(i), 0, 1000).unwrap();
        }
        let children: Vec<_> = (0..2)
            .map(|_| spawn_child("arena::tests::reader_child", &n.instance, "0"))
            .collect();
        let attached = || {
            (0..c.pin_rows)
                .filter(|&r| o.map.row(r).owner_pid.load(Ordering::Relaxed) != 0)
                .count()
        };
        let t = Instant::now();
        while attached() < 2 && t.elapsed() < DEADLINE {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The writer inserts (with evictions and second chances), replaces and removes
        // meanwhile (a pinned head makes some inserts Busy, which is fine), for a fixed amount
        // of work and at least a second; dropping the owner then tells the readers to stop.
        let t = Instant::now();
        let mut x = 7u64;
        let mut version = 1;
        let (mut busy, mut removed, mut ops) = (0, 0, 0);
        while ops < 3000 || t.elapsed() < Duration::from_secs(1) {
            ops += 1;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = key(x % KEYS);
            match x % 10 {
                0 => removed += u64::from(o.remove(&k)),
                1 => {
                    let _ = o.evict_until(c.capacity / 2);
                }
                _ => {
                    version += 1;
                    if put(&mut o, &k, version, (x >> 8) as usize % 7000).is_err() {
                        busy += 1;
                    }
                }
            }
        }
        let u = o.usage();
        assert!(u.evictions > 100 && removed > 10, "{u:?}");
        eprintln!("writer: {version} versions, {busy} busy, {u:?}");
        o.audit().unwrap();
        drop(o);
        for child in children {
            let (status, out) = wait_child(child);
            assert!(status.success(), "reader failed: {status} {out}");
            let hits: u64 = out
                .split_whitespace()
                .skip_while(|w| *w != "hits")
                .nth(1)
                .and_then(|h| h.parse().ok())
                .unwrap_or_else(|| panic!("no report in {out:?}"));
            assert!(hits > 10, "{out}");
        }
    }

    /// Child: pins every object it finds, reports how many, then waits to be killed.
    #[test]
    #[ignore = "a child process of a_killed_readers_pins_are_released"]
    fn pinning_child() {
        let (n, keys) = child_args();
        let arena = Arena::open(&n).unwrap();
        let reader = arena.attach().unwrap();
        let pins: Vec<_> = (0..keys)
            .filter_map(|i| match reader.lookup(&key(i)) {
                Lookup::Hit(p) => Some(p),
                _ => None,
            })
            .collect();
        println!("pinned {}", pins.len());
        std::thread::sleep(DEADLINE);
    }

    #[test]
    fn a_killed_readers_pins_are_released() {
        let n = names("kill");
        let c = ArenaConfig::for_capacity(256 << 10, 16 << 10, 4, 8);
        let mut o = owner(&n, c);
        let arena = Arena::open(&n).unwrap();
        for round in 0..3 {
            for i in 0..8 {
                put(&mut o, &key(i), round, 5000).unwrap();
            }
            let mut child = spawn_child("arena::tests::pinning_child", &n.instance, "8");
            let out = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            // The test harness of the child prints lines of its own: forward them all (reading
            // on until the child dies, so it never writes into a closed pipe).
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines() {
                    let _ = tx.send(line.unwrap_or_default());
                }
            });
            let t = Instant::now();
            let line = loop {
                let left = DEADLINE.saturating_sub(t.elapsed());
                let line = rx.recv_timeout(left).expect("child reports its pins");
                // The harness's "test … " may begin the same line.
                if let Some(at) = line.find("pinned ") {
                    break line[at..].to_string();
                }
            };
            assert_eq!(line.trim(), "pinned 8");
            for i in 0..8 {
                assert!(o.remove(&key(i)));
            }
            assert_eq!(o.evict_until(c.capacity), Err(ReserveError::Busy));
            assert!(o.usage().used >= 8 * 5000);
            let pid = child.id();
            child.kill().unwrap();
            child.wait().unwrap();
            assert_eq!(arena.release_worker(pid), 8);
            assert_eq!(arena.release_worker(pid), 0);
            o.evict_until(c.capacity).unwrap();
            let u = o.usage();
            assert_eq!((u.used, u.live_objects, u.live_bytes), (0, 0, 0), "{u:?}");
            assert_eq!(o.audit().unwrap(), Audit::default());
        }
    }
}
