//! The key table: presented secrets to entries, built for one thing — a
//! lookup that waits for memory once, and not for long.
//!
//! A SwissTable (hashbrown) keeps its control bytes and its entries in two
//! different places, so a lookup at a million keys pays two cache misses.
//! Here a slot is one 64-byte cache line holding the first 16 bytes of the
//! key's digest and the entry itself, in an open-addressing table with linear
//! probing; keys are never deleted (revoked keys stay, marked). Capacity is
//! sized to the entry count (not rounded to a power of two), which also saves
//! memory.
//!
//! Where a key sits is decided by its [`Locator`] (a keyed SipHash of the
//! secret), not by its digest: a check computes the locator first, asks the
//! CPU to fetch the first slots ([`DigestMap::prefetch`]), and computes the BLAKE3
//! digest while the slot travels from memory — at a million keys both take
//! about as long, so the miss is mostly hidden. Keys stored before locators
//! existed sit where their digest says ([`Locator::of_digest`]); while any
//! such key is in the table, a lookup that misses looks there too.
//!
//! Sixteen bytes of a keyed BLAKE3 digest are a 128-bit MAC: without the
//! pepper, a guessed secret matches any of a million stored keys with
//! probability 2^-108, wherever it is looked up. An all-zero prefix marks an
//! empty slot; a digest with that prefix (probability 2^-128) is never
//! stored, so such a key is refused rather than confused with an empty slot —
//! the table fails closed.
//!
//! Like [`crate::ShardMap`], the table is split into 1024 copy-on-write
//! shards (chosen by the locator's low bits), so a snapshot clones in O(1)
//! and a change copies one shard of ~1k entries. Beside the shards, a plain
//! array of each shard's slot address and capacity (16 KiB, no reference
//! counts) is what the prefetch reads: the address to fetch is one usually
//! cached read away from the locator. (Reaching it through the shard's own
//! header, in its own allocation, missed the cache on most 1M-key checks and
//! delayed the prefetch: ~5 % of a check, interleaved A/B. Holding the slot
//! arrays as `Arc<[Slot]>`s side by side instead put each one's reference
//! count in a cold line of its own, and publishing a change, which counts a
//! reference to every shard, went from 25 to 75 µs.) The lookup itself goes
//! through the shards, so the address array is only ever a hint.

use std::sync::Arc;

use crate::secret::{Hashed, Locator};
use crate::Digest;

const SHARD_BITS: u32 = 10;
const SHARDS: usize = 1 << SHARD_BITS;
/// Grow when the table is fuller than this (numerator over 8): linear
/// probing stays short at 3/4.
const MAX_LOAD_EIGHTHS: usize = 6;

/// How many slots from a key's first one a lookup prefetches. Linear
/// probing at a load of 0.72-0.75 finds a key beyond its first slot a third
/// of the time and beyond its fourth about a tenth (simulated), and each
/// further slot is another cache line: prefetching only the first left
/// every such lookup waiting for memory twice. Interleaved A/B of the whole
/// 1M-key check against one slot: 3 slots 0.94-0.95, 4 slots 0.915-0.919,
/// 6 slots 0.91-0.94. (Four adjacent lines rarely cross a page, so the
/// extra hints cost no extra address translation.)
const PREFETCH_SLOTS: usize = 4;

/// The part of a digest the table keeps and compares.
type Prefix = [u8; 16];
const EMPTY: Prefix = [0; 16];

#[inline]
fn prefix(d: &Digest) -> Prefix {
    let mut p = [0u8; 16];
    p.copy_from_slice(&d.0[..16]);
    p
}

/// The shard a locator picks (its low bits).
#[inline]
fn shard_of(l: Locator) -> usize {
    l.0 as usize & (SHARDS - 1)
}

/// The locator bits that pick the first slot within the shard (its high bits).
#[inline]
fn place_of(l: Locator) -> u32 {
    (l.0 >> 32) as u32
}

#[inline]
fn first_slot(place: u32, cap: usize) -> usize {
    ((u64::from(place) * cap as u64) >> 32) as usize
}

/// One slot: a cache line holding the digest prefix and the entry.
#[derive(Clone, Default)]
#[repr(C, align(64))]
struct Slot<V> {
    key: Prefix,
    value: V,
}

/// One shard: an open-addressing table with linear probing and no deletion.
/// Empty slots have the all-zero prefix and a default value.
#[derive(Clone)]
struct Table<V> {
    slots: Box<[Slot<V>]>,
    /// Each slot's place, to re-insert it when the shard grows. Lookups never
    /// read it, so it is kept apart from the slots.
    places: Box<[u32]>,
    len: usize,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            slots: Box::new([]),
            places: Box::new([]),
            len: 0,
        }
    }
}

impl<V: Clone + Default> Table<V> {
    fn capacity_for(n: usize) -> usize {
        (n * 8 / MAX_LOAD_EIGHTHS).max(8) + 1
    }

    fn with_capacity(cap: usize) -> Self {
        Table {
            slots: (0..cap).map(|_| Slot::default()).collect(),
            places: vec![0; cap].into_boxed_slice(),
            len: 0,
        }
    }

    #[inline]
    fn get(&self, place: u32, key: &Prefix) -> Option<&V> {
        let cap = self.slots.len();
        if cap == 0 {
            return None;
        }
        let mut i = first_slot(place, cap);
        loop {
            let slot = &self.slots[i];
            if slot.key == *key {
                return Some(&slot.value);
            }
            if slot.key == EMPTY {
                return None;
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
    }

    /// Inserts or replaces (keyed by the prefix); the table must have a free slot.
    fn put(&mut self, place: u32, key: Prefix, v: V) -> Option<V> {
        let cap = self.slots.len();
        let mut i = first_slot(place, cap);
        loop {
            let slot = &mut self.slots[i];
            if slot.key == key {
                return Some(std::mem::replace(&mut slot.value, v));
            }
            if slot.key == EMPTY {
                *slot = Slot { key, value: v };
                self.places[i] = place;
                self.len += 1;
                return None;
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
    }

    fn rebuilt(&mut self, cap: usize) -> Table<V> {
        let mut t = Table::with_capacity(cap);
        let places = std::mem::take(&mut self.places);
        for (slot, place) in std::mem::take(&mut self.slots)
            .into_vec()
            .into_iter()
            .zip(places.iter())
        {
            if slot.key != EMPTY {
                t.put(*place, slot.key, slot.value);
            }
        }
        t
    }

    fn insert(&mut self, place: u32, key: Prefix, v: V) -> Option<V> {
        debug_assert_ne!(key, EMPTY, "callers filter the empty prefix");
        if (self.len + 1) * 8 > self.slots.len() * MAX_LOAD_EIGHTHS {
            *self = self.rebuilt(Self::capacity_for((self.len + 1) * 2));
        }
        self.put(place, key, v)
    }
}

/// Where a shard's slots are, for the prefetch hint only: the address of
/// its first slot and its capacity. Never dereferenced.
#[derive(Clone, Copy)]
struct Head {
    addr: usize,
    cap: usize,
}

impl Head {
    fn of<V>(t: &Table<V>) -> Head {
        Head {
            addr: t.slots.as_ptr() as usize,
            cap: t.slots.len(),
        }
    }
}

/// Hashed secrets to entries, sharded and copy-on-write. See the module docs.
pub struct DigestMap<V> {
    shards: Arc<[Arc<Table<V>>]>,
    /// `Head::of` each shard, kept in step by every change.
    heads: Arc<[Head]>,
    len: usize,
    /// Entries placed by their digest (stored without a locator).
    by_digest: usize,
}

impl<V> Clone for DigestMap<V> {
    fn clone(&self) -> Self {
        DigestMap {
            shards: Arc::clone(&self.shards),
            heads: Arc::clone(&self.heads),
            len: self.len,
            by_digest: self.by_digest,
        }
    }
}

impl<V: Clone + Default> Default for DigestMap<V> {
    fn default() -> Self {
        DigestMap {
            shards: (0..SHARDS).map(|_| Arc::new(Table::default())).collect(),
            heads: (0..SHARDS)
                .map(|_| Head::of(&Table::<V>::default()))
                .collect(),
            len: 0,
            by_digest: 0,
        }
    }
}

impl<V: Clone + Default> DigestMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resizes every shard to fit its entries at the target load, after a
    /// bulk load made of single inserts (one shard at a time, so the peak
    /// memory is one shard's worth above the result).
    pub fn compact(&mut self) {
        let shards = Arc::make_mut(&mut self.shards);
        let heads = Arc::make_mut(&mut self.heads);
        for (shard, head) in shards.iter_mut().zip(heads.iter_mut()) {
            let want = Table::<V>::capacity_for(shard.len);
            if shard.slots.len() > want {
                let t = Arc::make_mut(shard);
                *t = t.rebuilt(want);
                *head = Head::of(t);
            }
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries stored without a locator (placed by their digest); while
    /// there are any, a lookup that misses probes a second place.
    pub fn placed_by_digest(&self) -> usize {
        self.by_digest
    }

    /// Starts fetching what a lookup at `l` reads — the first slots (see
    /// [`PREFETCH_SLOTS`]) and the shard's header — without waiting for it:
    /// hints to the CPU, which never fault and change nothing.
    #[inline]
    pub fn prefetch(&self, l: Locator) {
        let h = self.heads[shard_of(l)];
        let first = first_slot(place_of(l), h.cap);
        for i in first..(first + PREFETCH_SLOTS).min(h.cap) {
            prefetch_addr(h.addr + i * std::mem::size_of::<Slot<V>>());
        }
        prefetch_addr(Arc::as_ptr(&self.shards[shard_of(l)]) as usize);
    }

    /// Looks a presented secret up: one shard pointer, then (usually) one
    /// slot; a second place only for a miss while keys without a locator exist.
    #[inline]
    pub fn get(&self, p: &Hashed) -> Option<&V> {
        let key = prefix(&p.digest);
        if key == EMPTY {
            return None;
        }
        let found = self.shards[shard_of(p.locator)].get(place_of(p.locator), &key);
        if found.is_some() || self.by_digest == 0 {
            return found;
        }
        let l = Locator::of_digest(&p.digest);
        self.shards[shard_of(l)].get(place_of(l), &key)
    }

    /// Inserts or replaces the entry of the key with this digest at this
    /// locator, copying the shard array and one shard if another snapshot
    /// shares them.
    pub fn insert(&mut self, p: Hashed, v: V) -> Option<V> {
        let key = prefix(&p.digest);
        if key == EMPTY {
            // Never stored: see the module documentation.
            return None;
        }
        let i = shard_of(p.locator);
        let shards = Arc::make_mut(&mut self.shards);
        let t = Arc::make_mut(&mut shards[i]);
        let old = t.insert(place_of(p.locator), key, v);
        Arc::make_mut(&mut self.heads)[i] = Head::of(t);
        if old.is_none() {
            self.len += 1;
            if p.locator == Locator::of_digest(&p.digest) {
                self.by_digest += 1;
            }
        }
        old
    }

    /// Every entry, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards
            .iter()
            .flat_map(|t| t.slots.iter().filter(|s| s.key != EMPTY).map(|s| &s.value))
    }
}

/// The one unsafe operation of the keystore: a prefetch hint.
#[inline]
#[allow(unsafe_code)]
fn prefetch_addr(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` only hints the cache: it reads nothing the
    // program sees, and a prefetch of any address, mapped or not, raises no
    // fault (Intel SDM, PREFETCHh; AMD APM likewise). The addresses come
    // from live allocations of the map. SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(i: u64) -> Digest {
        Digest(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    /// A key with a locator independent of its digest, as issued keys have.
    fn key(i: u64) -> Hashed {
        let l = blake3::hash(&(i ^ 0x5a5a_5a5a).to_be_bytes());
        Hashed {
            locator: Locator(u64::from_le_bytes(l.as_bytes()[..8].try_into().unwrap())),
            digest: digest(i),
        }
    }

    /// Every head is where its shard's slots are.
    fn heads_match<V: Clone + Default>(m: &DigestMap<V>) {
        for (t, h) in m.shards.iter().zip(m.heads.iter()) {
            assert_eq!((h.addr, h.cap), (t.slots.as_ptr() as usize, t.slots.len()));
        }
    }

    /// A key stored without a locator: placed by its digest.
    fn legacy(i: u64) -> Hashed {
        let d = digest(i);
        Hashed {
            locator: Locator::of_digest(&d),
            digest: d,
        }
    }

    #[test]
    fn inserts_replaces_and_finds_everything() {
        let mut m: DigestMap<u64> = DigestMap::new();
        for i in 0..20_000 {
            assert_eq!(m.insert(key(i), i), None);
        }
        assert_eq!(m.insert(key(7), 70), Some(7));
        assert_eq!(m.len(), 20_000);
        for i in 0..20_000 {
            let want = if i == 7 { 70 } else { i };
            assert_eq!(m.get(&key(i)), Some(&want));
        }
        for i in 20_000..21_000 {
            assert_eq!(m.get(&key(i)), None);
        }
        assert_eq!(m.values().count(), 20_000);
        heads_match(&m);
    }

    #[test]
    fn the_digest_decides_not_the_locator() {
        let mut m: DigestMap<u64> = DigestMap::new();
        for i in 0..1000 {
            m.insert(key(i), i);
        }
        for i in 0..1000 {
            // The right place with the wrong digest finds nothing...
            let wrong = Hashed {
                locator: key(i).locator,
                digest: digest(i + 1_000_000),
            };
            assert_eq!(m.get(&wrong), None);
            // ...and the right digest looked up elsewhere is not found there.
            let elsewhere = Hashed {
                locator: key(i + 1_000_000).locator,
                digest: digest(i),
            };
            assert_eq!(m.get(&elsewhere), None);
        }
    }

    #[test]
    fn keys_without_a_locator_are_found_by_their_digest() {
        let mut m: DigestMap<u64> = DigestMap::new();
        for i in 0..3000 {
            let k = if i % 3 == 0 { legacy(i) } else { key(i) };
            m.insert(k, i);
        }
        assert_eq!(m.by_digest, 1000);
        for i in 0..3000 {
            // A presented secret always comes with its computed locator; a
            // legacy key is still found, through the second place.
            assert_eq!(m.get(&key(i)), Some(&i), "{i}");
        }
        assert_eq!(m.get(&key(5000)), None);
        // Updating a legacy entry in place does not count it twice.
        m.insert(legacy(3), 33);
        assert_eq!(m.by_digest, 1000);
        assert_eq!(m.get(&key(3)), Some(&33));
    }

    #[test]
    fn compacting_keeps_every_entry_and_frees_slots() {
        let mut built = DigestMap::new();
        for i in 0..5000 {
            built.insert(key(i), i);
        }
        let before: usize = built.shards.iter().map(|t| t.slots.len()).sum();
        built.compact();
        let after: usize = built.shards.iter().map(|t| t.slots.len()).sum();
        assert!(after <= before);
        assert_eq!(built.len(), 5000);
        for i in 0..5000 {
            assert_eq!(built.get(&key(i)), Some(&i));
        }
        assert_eq!(built.get(&key(99_999)), None);
        heads_match(&built);
    }

    #[test]
    fn clones_do_not_see_later_changes_and_share_untouched_shards() {
        let mut a = DigestMap::new();
        for i in 0..5000 {
            a.insert(key(i), i);
        }
        let b = a.clone();
        a.insert(key(1), 100);
        a.insert(key(123_456), 1);
        assert_eq!(b.get(&key(1)), Some(&1));
        assert_eq!(b.get(&key(123_456)), None);
        assert_eq!(a.get(&key(1)), Some(&100));
        let shared = a
            .shards
            .iter()
            .zip(b.shards.iter())
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(shared >= SHARDS - 2, "{shared} shards shared");
        // Growing shards the clone shares leaves the clone whole.
        for i in 5000..15_000 {
            a.insert(key(i), i);
        }
        assert_eq!(b.len(), 5000);
        assert_eq!(b.values().count(), 5000);
        for i in 0..5000 {
            assert_eq!(b.get(&key(i)), Some(&i));
            assert_eq!(a.get(&key(i)), Some(if i == 1 { &100 } else { &i }));
        }
        assert_eq!(b.get(&key(5000)), None);
        assert_eq!(a.get(&key(14_999)), Some(&14_999));
        heads_match(&a);
        heads_match(&b);
    }

    #[test]
    fn a_slot_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Slot<crate::snapshot::KeyEntry>>(), 64);
        assert_eq!(std::mem::align_of::<Slot<crate::snapshot::KeyEntry>>(), 64);
    }

    #[test]
    fn an_all_zero_prefix_is_never_found() {
        let mut m: DigestMap<u64> = DigestMap::new();
        let mut d = Digest([0; 32]);
        d.0[20] = 1;
        let p = Hashed {
            locator: key(1).locator,
            digest: d,
        };
        assert_eq!(m.insert(p, 1), None);
        assert_eq!(m.get(&p), None);
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn an_empty_shard_grows_from_nothing() {
        let mut m: DigestMap<u8> = DigestMap::new();
        m.prefetch(key(1).locator);
        assert_eq!(m.get(&key(1)), None);
        // All in one shard, so it grows several times.
        let mut same_shard = Vec::new();
        let mut i = 0;
        while same_shard.len() < 100 {
            if shard_of(key(i).locator) == 0 {
                same_shard.push(i);
            }
            i += 1;
        }
        for (n, &i) in same_shard.iter().enumerate() {
            m.insert(key(i), n as u8);
            m.prefetch(key(i).locator);
        }
        let t = &m.shards[0];
        assert!(t.len * 8 <= t.slots.len() * MAX_LOAD_EIGHTHS);
        for (n, &i) in same_shard.iter().enumerate() {
            assert_eq!(m.get(&key(i)), Some(&(n as u8)));
        }
    }
}
