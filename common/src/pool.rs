//! The segment pool: `segments` × `segment_size` bytes of shared memory created by the proxy
//! master, shared by its workers (which lease segments) and by `cached` (which joins a leased
//! segment when the doorbell names it). Also the chunked semaphore handoff over a segment.
//!
//! Must never: hand out a segment that either side may still touch, trust a slot length or a
//! doorbell without validating it, or wait without a bound.
//!
//! ## Segment state word
//! `state = generation << 32 | owner_pid << 8 | flags`, flags `PROXY` (a worker holds it),
//! `CACHED` (cached holds it), `ABORTED` (the transfer failed; contents untrusted).
//! A segment is free when neither `PROXY` nor `CACHED` is set. Whoever clears the last holder
//! bit posts the pool's `free` semaphore, so a segment returns to the pool only when both
//! sides are provably done; an aborted segment still held by one side is *quarantined* until
//! that side lets go (or the master reclaims it from a dead process).
//!
//! ## Idle segments
//! The master calls [`Pool::trim_idle`] in its housekeeping: a segment free for a while has
//! its pages given back (`MADV_REMOVE`; the pool is a tmpfs object shared by every process,
//! where `MADV_DONTNEED` frees nothing), so the pool costs memory only for the segments a
//! burst is using. It leases the segment for that like an acquirer, so nobody touches it.
//!
//! ## Handoff protocol (K = `slots` chunk slots per segment, each `slot_size` bytes)
//! | step | proxy worker                                   | cached                                   |
//! |------|------------------------------------------------|------------------------------------------|
//! | 1    | `acquire`: CAS free→(gen+1, pid, PROXY); init sems free=K, to_cached=0, to_proxy=0 | |
//! | 2    | write request stream: per chunk wait `free`, copy, set slot len/flags, post `to_cached` | |
//! | 3    | send doorbell (index, generation) after the first chunk | |
//! | 4    |                                                | `join`: CAS (gen, PROXY)→(gen, PROXY+CACHED) |
//! | 5    |                                                | read request stream: wait `to_cached`, copy out, post `free`, until LAST |
//! | 6    | wait `to_proxy` for the response               | write response stream: wait `free`, copy, post `to_proxy`, LAST on the final chunk |
//! | 7    | read until LAST, post `free` per chunk; clear PROXY | clear CACHED after posting LAST |
//! | 8    | the side clearing the last holder bit posts the pool's `free` semaphore | |
//!
//! Each phase restarts at slot 0: cached drains the whole request stream before it writes
//! (step 5 before 6), so every slot is free when the response starts. Waits are sliced
//! (100 ms) and between slices each side checks the state word (aborted? generation still
//! ours?) and whether its peer process lives. Aborting sets `ABORTED`, posts every semaphore
//! once to wake the peer, then clears the holder bit.

use crate::names::Names;
use crate::process::ProcId;
use crate::sem::SharedSem;
use crate::shm::{RegionHeader, ShmError, ShmRegion, ShmSafe};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const POOL_MAGIC: u32 = u32::from_le_bytes(*b"SHPL");
pub const POOL_VERSION: u32 = 4;
pub const MAX_SLOTS: usize = 8;
pub const MIN_SEGMENT_SIZE: usize = 1024;
pub const MAX_SEGMENT_SIZE: usize = 64 << 20;

const PROXY: u64 = 1;
const CACHED: u64 = 2;
const ABORTED: u64 = 4;
const HOLDERS: u64 = PROXY | CACHED;
const SLOT_LAST: u32 = 1;
const WAIT_SLICE: Duration = Duration::from_millis(100);

fn gen_of(state: u64) -> u32 {
    (state >> 32) as u32
}

fn pid_of(state: u64) -> u32 {
    ((state >> 8) & 0xff_ffff) as u32
}

/// The tag of chunk `n` of the stream written by `writer` in transfer `generation`: the
/// generation's low 16 bits, the writing side, and the chunk number modulo 2^15 (a stale
/// chunk is a lap of 2 to 8 slots behind, or from another transfer).
fn chunk_tag(generation: u32, writer: Side, n: u32) -> u32 {
    let side = match writer {
        Side::Proxy => 0,
        Side::Cached => 1 << 15,
    };
    (generation << 16) | side | (n & 0x7fff)
}

#[repr(C)]
struct PoolHeader {
    region: RegionHeader,
    pool_id: AtomicU64,
    segments: AtomicU32,
    slots: AtomicU32,
    segment_size: AtomicU64,
    data_offset: AtomicU64,
    next_hint: AtomicU32,
    _pad: AtomicU32,
    /// Counts free segments.
    free: SharedSem,
}

// SAFETY: atomics and a SharedSem only; repr(C); alignment 8.
unsafe impl ShmSafe for PoolHeader {}

#[repr(C)]
struct SegmentHeader {
    state: AtomicU64,
    request_id: AtomicU64,
    cached_pid: AtomicU32,
    /// 1 once `trim_idle` gave the free segment's pages back (until it is leased again).
    trimmed: AtomicU32,
    cached_start: AtomicU64,
    /// When the segment was last leased or became free (`process::monotonic_ms`).
    acquired_ms: AtomicU64,
    free: SharedSem,
    to_cached: SharedSem,
    to_proxy: SharedSem,
    slot_len: [AtomicU32; MAX_SLOTS],
    slot_flags: [AtomicU32; MAX_SLOTS],
    /// Which chunk each slot holds ([`chunk_tag`]): the reader checks it is the one it
    /// expects, so a stale or overwritten chunk is never taken for the next one.
    slot_tag: [AtomicU32; MAX_SLOTS],
}

// SAFETY: atomics and SharedSems only; repr(C); alignment 8.
unsafe impl ShmSafe for SegmentHeader {}

const POOL_HEADER_SIZE: usize = 256;
const SEGMENT_HEADER_SIZE: usize = 256;
const _: () = assert!(size_of::<PoolHeader>() <= POOL_HEADER_SIZE);
const _: () = assert!(size_of::<SegmentHeader>() <= SEGMENT_HEADER_SIZE);

/// Which side of a transfer a lease belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Proxy,
    Cached,
}

impl Side {
    /// The other end of the transfer.
    fn peer(self) -> Side {
        match self {
            Side::Proxy => Side::Cached,
            Side::Cached => Side::Proxy,
        }
    }
}

#[derive(Debug)]
pub enum AcquireError {
    TimedOut(Duration),
    Sem(crate::sem::SemError),
}

impl std::fmt::Display for AcquireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AcquireError::TimedOut(d) => write!(f, "no free segment within {d:?}"),
            AcquireError::Sem(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AcquireError {}

/// Why `cached` refused a doorbell.
#[derive(Debug, PartialEq, Eq)]
pub enum JoinError {
    BadIndex(u32),
    /// The segment was released or re-leased since the doorbell was sent.
    Stale {
        expected: u32,
        found: u32,
    },
    NotLeased,
    AlreadyJoined,
    Aborted,
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::BadIndex(i) => write!(f, "segment index {i} out of range"),
            JoinError::Stale { expected, found } => {
                write!(
                    f,
                    "stale doorbell: generation {expected}, segment is at {found}"
                )
            }
            JoinError::NotLeased => write!(f, "segment is not leased by a worker"),
            JoinError::AlreadyJoined => write!(f, "segment already joined"),
            JoinError::Aborted => write!(f, "segment transfer was aborted"),
        }
    }
}

/// State of one segment, as shown by stats and the dashboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentState {
    Free,
    InUse,
    Quarantined,
}

impl SegmentState {
    pub fn as_str(self) -> &'static str {
        match self {
            SegmentState::Free => "free",
            SegmentState::InUse => "in_use",
            SegmentState::Quarantined => "quarantined",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub segments: u32,
    pub free: u32,
    pub in_use: u32,
    pub quarantined: u32,
}

/// Validates a pool header's layout against the mapped length (never trust a header written
/// by another process: a bad one must not make us index outside the mapping).
pub fn check_layout(
    segments: u32,
    slots: u32,
    segment_size: usize,
    data_offset: usize,
    len: usize,
) -> Result<(), &'static str> {
    if !(2..=MAX_SLOTS as u32).contains(&slots) {
        return Err("bad chunk slot count");
    }
    if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size) {
        return Err("bad segment size");
    }
    let headers_end = (segments as usize)
        .checked_mul(SEGMENT_HEADER_SIZE)
        .and_then(|h| h.checked_add(POOL_HEADER_SIZE));
    let needed = (segments as usize)
        .checked_mul(segment_size)
        .and_then(|d| d.checked_add(data_offset));
    if segments == 0 || headers_end.is_none_or(|end| data_offset < end) || needed != Some(len) {
        return Err("layout does not match the region length");
    }
    Ok(())
}

/// The mapped pool. The master creates it (and unlinks it on drop); workers inherit the
/// mapping across `fork`; `cached` opens it by name.
pub struct Pool {
    region: ShmRegion,
    pool_id: u64,
    segments: u32,
    slots: u32,
    segment_size: usize,
    slot_size: usize,
    data_offset: usize,
}

impl Pool {
    /// Creates the pool of `names` (replacing a stale one from a dead master).
    pub fn create(
        names: &Names,
        segments: u32,
        segment_size: usize,
        slots: u32,
    ) -> Result<Pool, ShmError> {
        assert!(segments >= 1 && (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size));
        assert!((2..=MAX_SLOTS as u32).contains(&slots));
        let segment_size = segment_size & !63;
        let headers_end = POOL_HEADER_SIZE + segments as usize * SEGMENT_HEADER_SIZE;
        let data_offset = headers_end.next_multiple_of(4096);
        let len = data_offset + segments as usize * segment_size;
        let region = ShmRegion::create(&names.pool, len, POOL_MAGIC, POOL_VERSION)?;
        let me = ProcId::current();
        let pool_id =
            (me.start << 24) ^ u64::from(me.pid) ^ crate::process::monotonic_ms().rotate_left(40);
        let h: &PoolHeader = region.get(0);
        h.pool_id.store(pool_id, Ordering::Relaxed);
        h.segments.store(segments, Ordering::Relaxed);
        h.slots.store(slots, Ordering::Relaxed);
        h.segment_size.store(segment_size as u64, Ordering::Relaxed);
        h.data_offset.store(data_offset as u64, Ordering::Relaxed);
        h.free.init(segments);
        let pool = Pool::from_region(region)?;
        pool.region.publish(POOL_MAGIC);
        Ok(pool)
    }

    /// Opens the live pool of `names`.
    pub fn open(names: &Names) -> Result<Pool, ShmError> {
        let region = ShmRegion::open(&names.pool, POOL_MAGIC, POOL_VERSION)?;
        Pool::from_region(region)
    }

    fn from_region(region: ShmRegion) -> Result<Pool, ShmError> {
        let invalid = |why: &str| ShmError::Invalid {
            name: region.name().to_string(),
            why: why.to_string(),
        };
        let h: &PoolHeader = region.get(0);
        let segments = h.segments.load(Ordering::Relaxed);
        let slots = h.slots.load(Ordering::Relaxed);
        let segment_size = h.segment_size.load(Ordering::Relaxed) as usize;
        let data_offset = h.data_offset.load(Ordering::Relaxed) as usize;
        check_layout(segments, slots, segment_size, data_offset, region.len()).map_err(invalid)?;
        Ok(Pool {
            pool_id: h.pool_id.load(Ordering::Relaxed),
            segments,
            slots,
            segment_size,
            slot_size: (segment_size / slots as usize) & !63,
            data_offset,
            region,
        })
    }

    fn header(&self) -> &PoolHeader {
        self.region.get(0)
    }

    fn seg(&self, index: u32) -> &SegmentHeader {
        self.region
            .get(POOL_HEADER_SIZE + index as usize * SEGMENT_HEADER_SIZE)
    }

    /// Identifies this pool instance: doorbells carry it, so `cached` remaps after a proxy restart.
    pub fn id(&self) -> u64 {
        self.pool_id
    }

    pub fn segments(&self) -> u32 {
        self.segments
    }

    pub fn segment_size(&self) -> usize {
        self.segment_size
    }

    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// The master that created the pool.
    pub fn owner(&self) -> ProcId {
        self.region.header().owner()
    }

    /// Hands the name to a successor master (our mapping stays valid for our workers).
    pub fn unlink_name(&mut self) {
        self.region.unlink_name();
    }

    /// A forked worker must not unlink the master's pool.
    pub fn disown(&mut self) {
        self.region.disown();
    }

    /// Leases a free segment for the calling worker, waiting at most `timeout`.
    pub fn acquire(&self, timeout: Duration, request_id: u64) -> Result<Lease<'_>, AcquireError> {
        let h = self.header();
        if !h.free.wait_for(timeout).map_err(AcquireError::Sem)? {
            return Err(AcquireError::TimedOut(timeout));
        }
        let pid = u64::from(std::process::id()) & 0xff_ffff;
        // Holding one unit of `free` entitles us to one free segment; scan for it. Another
        // acquirer may take the one we look at first, but never more segments than units.
        loop {
            let start = h.next_hint.fetch_add(1, Ordering::Relaxed);
            for k in 0..self.segments {
                let index = (start.wrapping_add(k)) % self.segments;
                let seg = self.seg(index);
                let s = seg.state.load(Ordering::Acquire);
                if s & HOLDERS != 0 {
                    continue;
                }
                let generation = gen_of(s).wrapping_add(1);
                let new = u64::from(generation) << 32 | pid << 8 | PROXY;
                // ORDERING: AcqRel: Acquire pairs with the Release of the last holder's clear,
                // so its writes to the segment happen before ours; Release publishes our claim.
                if seg
                    .state
                    .compare_exchange(s, new, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    // We hold the segment alone: nobody waits on or posts its semaphores.
                    seg.free.init(self.slots);
                    seg.to_cached.init(0);
                    seg.to_proxy.init(0);
                    seg.request_id.store(request_id, Ordering::Relaxed);
                    seg.acquired_ms
                        .store(crate::process::monotonic_ms(), Ordering::Relaxed);
                    seg.trimmed.store(0, Ordering::Relaxed);
                    return Ok(Lease::new(self, Side::Proxy, index, generation));
                }
            }
            std::thread::yield_now();
        }
    }

    /// `cached` takes its part of the segment a doorbell names.
    pub fn join(
        &self,
        index: u32,
        generation: u32,
        request_id: u64,
    ) -> Result<Lease<'_>, JoinError> {
        if index >= self.segments {
            return Err(JoinError::BadIndex(index));
        }
        let seg = self.seg(index);
        let me = ProcId::current();
        // Identity first: when CACHED is visible, these fields name the holder.
        seg.cached_pid.store(me.pid, Ordering::Relaxed);
        seg.cached_start.store(me.start, Ordering::Relaxed);
        let s = seg.state.load(Ordering::Acquire);
        if gen_of(s) != generation || seg.request_id.load(Ordering::Relaxed) != request_id {
            return Err(JoinError::Stale {
                expected: generation,
                found: gen_of(s),
            });
        }
        if s & ABORTED != 0 {
            return Err(JoinError::Aborted);
        }
        if s & PROXY == 0 {
            return Err(JoinError::NotLeased);
        }
        if s & CACHED != 0 {
            return Err(JoinError::AlreadyJoined);
        }
        // ORDERING: AcqRel: Acquire makes the worker's request chunks (written before its
        // doorbell) visible; Release publishes cached_pid/start written above.
        match seg
            .state
            .compare_exchange(s, s | CACHED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(Lease::new(self, Side::Cached, index, generation)),
            Err(now) if now & ABORTED != 0 => Err(JoinError::Aborted),
            Err(now) => Err(JoinError::Stale {
                expected: generation,
                found: gen_of(now),
            }),
        }
    }

    /// Clears `bit` (and marks the transfer aborted if `abort`), waking the peer; posts the
    /// pool's free count when no holder remains. Only if the state still matches `expect`.
    ///
    /// An abort is published before anyone is woken, and both happen while `bit` is still
    /// held: a woken peer finds ABORTED when it checks the state (it never takes a stale
    /// chunk for a new one), and the segment cannot be leased again while we still post its
    /// semaphores.
    fn let_go(&self, index: u32, expect: impl Fn(u64) -> bool, bit: u64, abort: bool) -> bool {
        let seg = self.seg(index);
        let mut s = seg.state.load(Ordering::Acquire);
        let mut woke = false;
        loop {
            if !expect(s) || s & bit == 0 {
                return false;
            }
            if abort && s & ABORTED == 0 {
                // ORDERING: AcqRel: the peer's Acquire in `check_state` sees ABORTED once
                // it is woken by the posts below, which come after this.
                match seg.state.compare_exchange(
                    s,
                    s | ABORTED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => s |= ABORTED,
                    Err(now) => {
                        s = now;
                        continue;
                    }
                }
            }
            if abort && !woke {
                // Wake whoever waits (nobody may touch the semaphores of a segment they do
                // not hold: we still hold `bit`).
                seg.free.post();
                seg.to_cached.post();
                seg.to_proxy.post();
                woke = true;
            }
            let new = s & !bit;
            // ORDERING: AcqRel: Release orders our last access to the data before the next
            // holder's Acquire; Acquire sees the peer's clear if it came first.
            match seg
                .state
                .compare_exchange(s, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if new & HOLDERS == 0 {
                        // Not ordered with the CAS: `trim_idle` only needs it roughly.
                        seg.acquired_ms
                            .store(crate::process::monotonic_ms(), Ordering::Relaxed);
                        self.header().free.post();
                    }
                    return true;
                }
                Err(now) => s = now,
            }
        }
    }

    /// Master: gives back the pages of every segment that has been free for at least `idle`
    /// (`ShmRegion::remove_pages`: the tmpfs pages of the shared mapping, in every process
    /// at once), so a pool sized for a burst does not stay resident after it. Each segment is
    /// leased for the purpose like an acquirer would (a unit of `free`, then the state CAS
    /// with a new generation), so no worker or `cached` can touch it meanwhile, and released
    /// at once. Skipped while no unit of `free` is spare. Returns the segments trimmed.
    pub fn trim_idle(&self, idle: Duration) -> u32 {
        let h = self.header();
        let now = crate::process::monotonic_ms();
        let idle_ms = idle.as_millis() as u64;
        let pid = u64::from(std::process::id()) & 0xff_ffff;
        let mut n = 0;
        for index in 0..self.segments {
            let seg = self.seg(index);
            let s = seg.state.load(Ordering::Acquire);
            if s & HOLDERS != 0
                || seg.trimmed.load(Ordering::Relaxed) != 0
                || now.saturating_sub(seg.acquired_ms.load(Ordering::Relaxed)) < idle_ms
            {
                continue;
            }
            if !h.free.try_wait() {
                break;
            }
            let new = u64::from(gen_of(s).wrapping_add(1)) << 32 | pid << 8 | PROXY;
            // ORDERING: AcqRel, as in `acquire`: the last holder's writes happen before the
            // removal, and our claim is published before it.
            if seg
                .state
                .compare_exchange(s, new, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                h.free.post();
                continue;
            }
            let off = self.data_offset + index as usize * self.segment_size;
            match self.region.remove_pages(off, self.segment_size) {
                Ok(_) => {
                    seg.trimmed.store(1, Ordering::Relaxed);
                    n += 1;
                }
                Err(e) => log::debug!("segment {index}: pages not given back: {e}"),
            }
            self.let_go(index, |now| now == new, PROXY, false);
        }
        n
    }

    /// Master: releases every segment leased by the dead worker `pid`. Returns how many.
    pub fn reclaim_worker(&self, pid: u32) -> u32 {
        let pid = pid & 0xff_ffff;
        (0..self.segments)
            .filter(|&i| self.let_go(i, |s| pid_of(s) == pid, PROXY, true))
            .count() as u32
    }

    /// Master: releases the part of every segment joined by a `cached` that is no longer alive.
    pub fn reclaim_dead_cached(&self) -> u32 {
        let mut n = 0;
        for i in 0..self.segments {
            let seg = self.seg(i);
            if seg.state.load(Ordering::Acquire) & CACHED == 0 {
                continue;
            }
            let holder = ProcId {
                pid: seg.cached_pid.load(Ordering::Relaxed),
                start: seg.cached_start.load(Ordering::Relaxed),
            };
            if !holder.alive() && self.let_go(i, |_| true, CACHED, true) {
                n += 1;
            }
        }
        n
    }

    pub fn state_of(&self, index: u32) -> SegmentState {
        let s = self.seg(index).state.load(Ordering::Relaxed);
        match (s & HOLDERS, s & ABORTED) {
            (0, _) => SegmentState::Free,
            (_, 0) => SegmentState::InUse,
            _ => SegmentState::Quarantined,
        }
    }

    pub fn occupancy(&self) -> Occupancy {
        let mut o = Occupancy {
            segments: self.segments,
            ..Occupancy::default()
        };
        for i in 0..self.segments {
            match self.state_of(i) {
                SegmentState::Free => o.free += 1,
                SegmentState::InUse => o.in_use += 1,
                SegmentState::Quarantined => o.quarantined += 1,
            }
        }
        o
    }

    /// Value of the free-segment semaphore (equals `occupancy().free` when idle).
    pub fn free_count(&self) -> i32 {
        self.header().free.value()
    }

    fn slot_ptr(&self, index: u32, slot: u32) -> *mut u8 {
        let off = self.data_offset
            + index as usize * self.segment_size
            + (slot % self.slots) as usize * self.slot_size;
        self.region.bytes_ptr(off, self.slot_size)
    }
}

/// One side's hold on a segment: writes a chunk stream (`io::Write` + [`Lease::finish`]) and
/// reads the peer's (`io::Read`). Dropping it without [`Lease::complete`] aborts the transfer.
pub struct Lease<'p> {
    pool: &'p Pool,
    side: Side,
    index: u32,
    generation: u32,
    timeout: Duration,
    peer: Option<ProcId>,
    tx_slot: u32,
    tx_off: usize,
    tx_open: bool,
    rx_slot: u32,
    rx_off: usize,
    rx_len: usize,
    rx_done: bool,
    done: bool,
}

impl<'p> Lease<'p> {
    fn new(pool: &'p Pool, side: Side, index: u32, generation: u32) -> Lease<'p> {
        Lease {
            pool,
            side,
            index,
            generation,
            timeout: Duration::from_secs(30),
            peer: None,
            tx_slot: 0,
            tx_off: 0,
            tx_open: false,
            rx_slot: 0,
            rx_off: 0,
            rx_len: 0,
            rx_done: false,
            done: false,
        }
    }

    /// The pool the segment belongs to.
    pub fn pool(&self) -> &'p Pool {
        self.pool
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Longest wait for the peer's next chunk or free slot.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Process whose death aborts our waits (the worker side names `cached`).
    pub fn set_peer(&mut self, peer: Option<ProcId>) {
        self.peer = peer;
    }

    fn seg(&self) -> &SegmentHeader {
        self.pool.seg(self.index)
    }

    fn my_bit(&self) -> u64 {
        match self.side {
            Side::Proxy => PROXY,
            Side::Cached => CACHED,
        }
    }

    /// Semaphores of our direction: (we post for the peer, we wait for the peer).
    fn sems(&self) -> (&SharedSem, &SharedSem) {
        let seg = self.seg();
        match self.side {
            Side::Proxy => (&seg.to_cached, &seg.to_proxy),
            Side::Cached => (&seg.to_proxy, &seg.to_cached),
        }
    }

    /// Is the transfer still ours (not aborted, not re-leased)? Checked after every wait.
    fn check_state(&self) -> io::Result<u64> {
        let s = self.seg().state.load(Ordering::Acquire);
        if gen_of(s) != self.generation || s & self.my_bit() == 0 || s & ABORTED != 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "segment transfer aborted",
            ));
        }
        Ok(s)
    }

    /// [`Lease::check_state`], and is the peer process alive? Checked after a wait slice
    /// that timed out (reading /proc costs syscalls: never on the fast path).
    fn check(&self) -> io::Result<()> {
        let s = self.check_state()?;
        let peer_dead = match self.side {
            Side::Proxy => self.peer.is_some_and(|p| !p.alive()),
            // The master clears PROXY when it reaps a worker; this catches a worker whose
            // master died too.
            Side::Cached => !std::path::Path::new(&format!("/proc/{}", pid_of(s))).exists(),
        };
        if peer_dead {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "peer process died",
            ));
        }
        Ok(())
    }

    fn wait(&self, sem: &SharedSem) -> io::Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if sem
                .wait_for(left.min(WAIT_SLICE))
                .map_err(io::Error::other)?
            {
                return self.check_state().map(|_| ());
            }
            if let Err(dead) = self.check() {
                // A peer may post its last chunk between our timed-out slice and the check,
                // then exit: what it posted before it died is still ours to take. Only a
                // semaphore that is still empty once the peer is gone means the peer failed.
                if sem.try_wait() {
                    return self.check_state().map(|_| ());
                }
                return Err(dead);
            }
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer did not answer in time",
                ));
            }
        }
    }

    fn post_tx(&mut self, last: bool) {
        let slot = (self.tx_slot % self.pool.slots) as usize;
        let seg = self.seg();
        seg.slot_len[slot].store(self.tx_off as u32, Ordering::Relaxed);
        seg.slot_flags[slot].store(if last { SLOT_LAST } else { 0 }, Ordering::Relaxed);
        seg.slot_tag[slot].store(
            chunk_tag(self.generation, self.side, self.tx_slot),
            Ordering::Relaxed,
        );
        // sem_post is a full memory barrier: the peer's sem_wait sees the chunk and its length.
        self.sems().0.post();
        self.tx_slot += 1;
        self.tx_off = 0;
        self.tx_open = false;
    }

    /// Marks the end of our stream (posts the final, possibly empty, chunk with LAST).
    pub fn finish(&mut self) -> io::Result<()> {
        if !self.tx_open {
            self.wait(&self.seg().free)?;
            self.tx_open = true;
        }
        self.post_tx(true);
        // The next phase (the peer's stream) starts at slot 0 for both sides.
        self.tx_slot = 0;
        Ok(())
    }

    /// Declares the transfer successful: dropping the lease now releases instead of aborting.
    pub fn complete(&mut self) {
        self.done = true;
    }

    /// True once the peer's stream has ended with LAST.
    pub fn peer_finished(&self) -> bool {
        self.rx_done
    }
}

impl io::Write for Lease<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if !self.tx_open {
            self.wait(&self.seg().free)?;
            self.tx_open = true;
        }
        let n = data.len().min(self.pool.slot_size - self.tx_off);
        let dst = self
            .pool
            .slot_ptr(self.index, self.tx_slot)
            .wrapping_add(self.tx_off);
        // SAFETY: `dst..dst+n` lies inside our slot (tx_off + n ≤ slot_size, `slot_ptr` checks
        // the slot's bounds); the `free` semaphore handed this slot to us, so the peer neither
        // reads nor writes it until we post; `data` is our own memory, so they do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, n) };
        self.tx_off += n;
        if self.tx_off == self.pool.slot_size {
            self.post_tx(false);
        }
        Ok(n)
    }

    /// Posts the partly filled chunk now (so the peer may stream it on).
    fn flush(&mut self) -> io::Result<()> {
        if self.tx_open && self.tx_off > 0 {
            self.post_tx(false);
        }
        Ok(())
    }
}

impl Lease<'_> {
    /// Makes sure a chunk with unread bytes is current; `false` at the end of the stream.
    fn next_rx(&mut self) -> io::Result<bool> {
        while self.rx_off == self.rx_len {
            if self.rx_done {
                return Ok(false);
            }
            self.wait(self.sems().1)?;
            let slot = (self.rx_slot % self.pool.slots) as usize;
            let len = self.seg().slot_len[slot].load(Ordering::Relaxed) as usize;
            let last = self.seg().slot_flags[slot].load(Ordering::Relaxed) & SLOT_LAST != 0;
            let tag = self.seg().slot_tag[slot].load(Ordering::Relaxed);
            if tag != chunk_tag(self.generation, self.side.peer(), self.rx_slot) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "segment {} generation {}: chunk {} out of sequence (tag {tag:#x})",
                        self.index, self.generation, self.rx_slot
                    ),
                ));
            }
            if len > self.pool.slot_size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "chunk length exceeds its slot",
                ));
            }
            self.rx_len = len;
            self.rx_off = 0;
            self.rx_done = last;
            if len == 0 {
                self.release_rx_slot();
            }
        }
        Ok(true)
    }

    fn consumed(&mut self, n: usize) {
        self.rx_off += n;
        if self.rx_off == self.rx_len {
            self.release_rx_slot();
        }
    }

    /// Sends the peer's bytes straight from the segment to a non-blocking socket (no copy
    /// through our memory): what the socket took, `Ok(0)` at the end of the stream, or
    /// `WouldBlock` when the socket is full (wait for POLLOUT and call again).
    pub fn send_to(&mut self, sock: BorrowedFd<'_>) -> io::Result<usize> {
        if !self.next_rx()? {
            return Ok(0);
        }
        let len = self.rx_len - self.rx_off;
        let src = self
            .pool
            .slot_ptr(self.index, self.rx_slot)
            .wrapping_add(self.rx_off);
        // SAFETY: `src..src+len` lies inside the current slot (rx_off ≤ rx_len ≤ slot_size,
        // validated in `next_rx`), which the peer handed to us and will not touch until we
        // post `free`; the kernel only reads it. `sock` is a live descriptor for the call.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                src.cast(),
                len,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.consumed(n as usize);
        Ok(n as usize)
    }
}

impl io::Read for Lease<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.next_rx()? {
            return Ok(0);
        }
        let n = buf.len().min(self.rx_len - self.rx_off);
        let src = self
            .pool
            .slot_ptr(self.index, self.rx_slot)
            .wrapping_add(self.rx_off);
        // SAFETY: `src..src+n` lies inside the current slot (rx_off + n ≤ rx_len ≤ slot_size,
        // validated in `next_rx`); the peer posted this slot to us and will not touch it
        // until we post `free`; `buf` is our own memory.
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), n) };
        self.consumed(n);
        Ok(n)
    }
}

impl Lease<'_> {
    fn release_rx_slot(&mut self) {
        self.seg().free.post();
        self.rx_slot += 1;
        self.rx_off = 0;
        self.rx_len = 0;
        if self.rx_done {
            self.rx_slot = 0;
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let generation = self.generation;
        let abort = !self.done;
        self.pool.let_go(
            self.index,
            |s| gen_of(s) == generation,
            self.my_bit(),
            abort,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Both processes map these headers: a change here bumps `POOL_VERSION`.
    #[test]
    fn header_layout_is_pinned() {
        use std::mem::offset_of;
        assert_eq!(size_of::<SharedSem>(), 32);
        assert_eq!(offset_of!(PoolHeader, region), 0);
        assert_eq!(offset_of!(PoolHeader, pool_id), 32);
        assert_eq!(offset_of!(PoolHeader, segments), 40);
        assert_eq!(offset_of!(PoolHeader, slots), 44);
        assert_eq!(offset_of!(PoolHeader, segment_size), 48);
        assert_eq!(offset_of!(PoolHeader, data_offset), 56);
        assert_eq!(offset_of!(PoolHeader, next_hint), 64);
        assert_eq!(offset_of!(PoolHeader, free), 72);
        assert_eq!(size_of::<PoolHeader>(), 104);
        assert_eq!(offset_of!(SegmentHeader, state), 0);
        assert_eq!(offset_of!(SegmentHeader, request_id), 8);
        assert_eq!(offset_of!(SegmentHeader, cached_pid), 16);
        assert_eq!(offset_of!(SegmentHeader, cached_start), 24);
        assert_eq!(offset_of!(SegmentHeader, acquired_ms), 32);
        assert_eq!(offset_of!(SegmentHeader, free), 40);
        assert_eq!(offset_of!(SegmentHeader, to_cached), 72);
        assert_eq!(offset_of!(SegmentHeader, to_proxy), 104);
        assert_eq!(offset_of!(SegmentHeader, slot_len), 136);
        assert_eq!(offset_of!(SegmentHeader, slot_flags), 136 + 4 * MAX_SLOTS);
        assert_eq!(offset_of!(SegmentHeader, slot_tag), 136 + 8 * MAX_SLOTS);
        assert_eq!(size_of::<SegmentHeader>(), 136 + 12 * MAX_SLOTS);
        assert_eq!(align_of::<PoolHeader>(), 8);
        assert_eq!(align_of::<SegmentHeader>(), 8);
    }

    fn names(tag: &str) -> Names {
        Names::for_instance(&format!("pt{}-{tag}", std::process::id()))
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// One round trip: request `req` from the proxy side, response `resp` from the cached
    /// side, through two mappings of one pool (as two processes would see it).
    fn round_trip(pool: &Pool, cached_view: &Pool, req: &[u8], resp: &[u8]) {
        let mut lease = pool.acquire(Duration::from_secs(1), 7).unwrap();
        let (index, generation) = (lease.index(), lease.generation());
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let mut c = cached_view.join(index, generation, 7).unwrap();
                let mut got = Vec::new();
                c.read_to_end(&mut got).unwrap();
                assert_eq!(got, req);
                c.write_all(resp).unwrap();
                c.finish().unwrap();
                c.complete();
            });
            lease.write_all(req).unwrap();
            lease.finish().unwrap();
            let mut got = Vec::new();
            lease.read_to_end(&mut got).unwrap();
            assert_eq!(got.len(), resp.len());
            assert!(got == resp);
            lease.complete();
        });
        drop(lease);
    }

    #[test]
    fn layouts_are_checked_against_the_mapping() {
        let ok = (4u32, 4u32, 4096usize, 4096usize, 4096 + 4 * 4096);
        assert!(check_layout(ok.0, ok.1, ok.2, ok.3, ok.4).is_ok());
        assert!(check_layout(0, 4, 4096, 4096, 4096).is_err());
        assert!(check_layout(4, 1, 4096, 4096, ok.4).is_err());
        assert!(check_layout(4, 4, 100, 4096, 4096 + 400).is_err());
        assert!(check_layout(4, 4, 4096, 4096, ok.4 + 1).is_err());
        assert!(
            check_layout(4, 4, 4096, 0, 4 * 4096).is_err(),
            "data overlapping the headers"
        );
        assert!(check_layout(u32::MAX, 4, 64 << 20, usize::MAX, usize::MAX).is_err());
    }

    #[test]
    fn streams_of_every_size_cross_one_segment() {
        let n = names("sizes");
        let pool = Pool::create(&n, 1, 4096, 4).unwrap();
        let view = Pool::open(&n).unwrap();
        let slot = pool.slot_size();
        for size in [
            0,
            1,
            slot - 1,
            slot,
            slot + 1,
            4095,
            4096,
            4097,
            10 * 4096 + 7,
            1 << 20,
        ] {
            round_trip(&pool, &view, &pattern(size / 3), &pattern(size));
        }
        assert_eq!(pool.occupancy().free, 1);
        assert_eq!(pool.free_count(), 1);
    }

    #[test]
    fn send_to_moves_the_stream_from_the_segment_to_a_socket() {
        let n = names("sendto");
        let pool = Pool::create(&n, 1, 4096, 2).unwrap();
        let view = Pool::open(&n).unwrap();
        let body = pattern(100_000);
        let mut lease = pool.acquire(Duration::from_secs(1), 1).unwrap();
        lease.finish().unwrap();
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let (index, generation) = (lease.index(), lease.generation());
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let mut c = view.join(index, generation, 1).unwrap();
                c.read_to_end(&mut Vec::new()).unwrap();
                c.write_all(&body).unwrap();
                c.finish().unwrap();
                c.complete();
            });
            let reader = sc.spawn(move || {
                let mut got = Vec::new();
                b.read_to_end(&mut got).unwrap();
                got
            });
            use std::os::fd::AsFd;
            loop {
                match lease.send_to(a.as_fd()) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            lease.complete();
            drop(a);
            assert!(reader.join().unwrap() == body);
        });
    }

    #[test]
    fn a_stale_chunk_is_refused_not_read() {
        let n = names("tag");
        let pool = Pool::create(&n, 1, 4096, 2).unwrap();
        let mut proxy = pool.acquire(Duration::from_secs(1), 1).unwrap();
        proxy.set_timeout(Duration::from_millis(200));
        proxy.finish().unwrap(); // an empty request
        let mut cached = pool.join(proxy.index(), proxy.generation(), 1).unwrap();
        let mut req = Vec::new();
        cached.read_to_end(&mut req).unwrap();
        // Two full chunks of the answer, both read.
        let slot = pool.slot_size();
        cached.write_all(&vec![1u8; 2 * slot]).unwrap();
        let mut buf = vec![0u8; 2 * slot];
        proxy.read_exact(&mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 1));
        // A stray post (as a confused peer might make) offers slot 0 again, still holding
        // chunk 0: it must be refused, not passed on as chunk 2.
        pool.seg(proxy.index()).to_proxy.post();
        let e = proxy.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        drop(cached);
        drop(proxy);
    }

    #[test]
    fn a_stale_generation_is_refused() {
        let n = names("stale");
        let pool = Pool::create(&n, 2, 4096, 2).unwrap();
        let lease = pool.acquire(Duration::from_secs(1), 1).unwrap();
        let (i, g) = (lease.index(), lease.generation());
        assert_eq!(
            pool.join(i, g.wrapping_add(1), 1).err(),
            Some(JoinError::Stale {
                expected: g.wrapping_add(1),
                found: g
            })
        );
        assert_eq!(
            pool.join(i, g, 2).err(),
            Some(JoinError::Stale {
                expected: g,
                found: g
            })
        );
        assert_eq!(pool.join(99, g, 1).err(), Some(JoinError::BadIndex(99)));
        drop(lease); // aborted: never completed
        assert_eq!(pool.join(i, g, 1).err(), Some(JoinError::Aborted));
        assert_eq!(pool.occupancy().free, 2);
    }

    #[test]
    fn exhaustion_times_out_and_release_refills() {
        let n = names("exhaust");
        let pool = Pool::create(&n, 2, 4096, 2).unwrap();
        let a = pool.acquire(Duration::from_secs(1), 1).unwrap();
        let b = pool.acquire(Duration::from_secs(1), 2).unwrap();
        assert_ne!(a.index(), b.index());
        assert!(matches!(
            pool.acquire(Duration::from_millis(30), 3),
            Err(AcquireError::TimedOut(_))
        ));
        assert_eq!(pool.occupancy().in_use, 2);
        drop(a);
        let c = pool.acquire(Duration::from_secs(1), 4).unwrap();
        drop((b, c));
        assert_eq!(pool.occupancy().free, 2);
    }

    #[test]
    fn an_aborted_segment_stays_quarantined_until_the_peer_lets_go() {
        let n = names("quar");
        let pool = Pool::create(&n, 1, 4096, 2).unwrap();
        let mut p = pool.acquire(Duration::from_secs(1), 1).unwrap();
        p.write_all(b"GET").unwrap();
        p.finish().unwrap();
        let mut c = pool.join(p.index(), p.generation(), 1).unwrap();
        drop(p); // worker gives up (client went away)
        assert_eq!(pool.state_of(0), SegmentState::Quarantined);
        assert!(matches!(
            pool.acquire(Duration::from_millis(20), 2),
            Err(AcquireError::TimedOut(_))
        ));
        // cached notices at its next wait and lets go.
        let big = vec![0u8; 64 << 10];
        assert!(c.write_all(&big).is_err());
        drop(c);
        assert_eq!(pool.state_of(0), SegmentState::Free);
        assert!(pool.acquire(Duration::from_millis(20), 3).is_ok());
    }

    #[test]
    fn a_dead_workers_segments_are_reclaimed() {
        let n = names("reclaim");
        let pool = Pool::create(&n, 3, 4096, 2).unwrap();
        let a = pool.acquire(Duration::from_secs(1), 1).unwrap();
        let b = pool.acquire(Duration::from_secs(1), 2).unwrap();
        std::mem::forget(a); // as if the worker died holding them
        std::mem::forget(b);
        assert_eq!(pool.occupancy().in_use, 2);
        assert_eq!(pool.reclaim_worker(std::process::id()), 2);
        assert_eq!(pool.occupancy().free, 3);
        assert_eq!(pool.free_count(), 3);
    }

    /// Blocks (512-byte units) the pool's shared memory object holds in tmpfs.
    fn blocks(n: &Names) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/dev/shm{}", n.pool))
            .unwrap()
            .blocks()
    }

    #[test]
    fn idle_free_segments_give_their_pages_back_and_held_ones_keep_them() {
        let n = names("trim");
        let size = 256 << 10;
        let pool = Pool::create(&n, 3, size, 2).unwrap();
        let slot = pool.slot_size();
        let bytes = vec![7u8; slot];
        // Every segment written once (its pages now in the object), one still held.
        let leases: Vec<_> = (0..3)
            .map(|i| {
                let mut l = pool.acquire(Duration::from_secs(1), i).unwrap();
                l.write_all(&bytes).unwrap();
                l
            })
            .collect();
        let before = blocks(&n);
        assert!(before * 512 >= 3 * slot as u64, "{before} blocks");
        let mut leases = leases.into_iter();
        let held = leases.next().unwrap();
        drop(leases); // aborted, hence free
        assert_eq!(
            pool.trim_idle(Duration::from_secs(60)),
            0,
            "not idle long enough"
        );
        assert_eq!(pool.trim_idle(Duration::ZERO), 2);
        assert_eq!(pool.trim_idle(Duration::ZERO), 0, "trimmed once");
        let after = blocks(&n);
        assert!(
            (before - after) * 512 >= 2 * slot as u64,
            "{before} -> {after} blocks"
        );
        assert_eq!(pool.occupancy().free, 2);
        assert_eq!(pool.free_count(), 2);
        // The held segment kept its bytes; a trimmed one is leased and written as before.
        let at = pool.data_offset + held.index() as usize * size;
        // SAFETY: (test) we hold the segment; a byte of its first slot, read once.
        let b = unsafe { *pool.region.bytes_ptr(at, 1) };
        assert_eq!(b, 7);
        drop(held);
        let mut again = pool.acquire(Duration::from_secs(1), 9).unwrap();
        again.write_all(&bytes).unwrap();
        drop(again);
        assert_eq!(pool.occupancy().free, 3);
    }
}
