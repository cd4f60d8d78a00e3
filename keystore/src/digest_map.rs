//! The key table: digests to entries, built for one thing — a lookup that
//! touches one place in memory.
//!
//! A SwissTable (hashbrown) keeps its control bytes and its entries in two
//! different places, so a lookup at a million keys pays two cache misses. A
//! digest is already uniform, and keys are never deleted (revoked keys stay,
//! marked), so a plain open-addressing table with linear probing does with
//! one: the first slot is at `digest[0..8] * capacity >> 64`, and a slot is
//! one 64-byte cache line holding the first 16 bytes of the digest and the
//! entry itself. Capacity is sized to the entry count (not rounded to a power
//! of two), which also saves memory.
//!
//! Sixteen bytes of a keyed BLAKE3 digest are a 128-bit MAC: without the
//! pepper, a guessed secret matches any of a million stored keys with
//! probability 2^-108. An all-zero prefix marks an empty slot; a digest with
//! that prefix (probability 2^-128) is never stored, so such a key is refused
//! rather than confused with an empty slot — the table fails closed.
//!
//! Like [`crate::ShardMap`], the table is split into 1024 copy-on-write
//! shards (chosen by other digest bits), so a snapshot clones in O(1) and a
//! change copies one shard of ~1k entries.

use std::sync::Arc;

use crate::Digest;

const SHARD_BITS: u32 = 10;
const SHARDS: usize = 1 << SHARD_BITS;
/// Grow when the table is fuller than this (numerator over 8): linear
/// probing stays short at 3/4.
const MAX_LOAD_EIGHTHS: usize = 6;

/// The part of a digest the table keeps and compares.
type Prefix = [u8; 16];
const EMPTY: Prefix = [0; 16];

#[inline]
fn prefix(d: &Digest) -> Prefix {
    let mut p = [0u8; 16];
    p.copy_from_slice(&d.0[..16]);
    p
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
    len: usize,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            slots: Box::new([]),
            len: 0,
        }
    }
}

#[inline]
fn first_slot(d: &Digest, cap: usize) -> usize {
    ((u128::from(d.table_hash()) * cap as u128) >> 64) as usize
}

#[inline]
fn shard_of(d: &Digest) -> usize {
    u16::from_le_bytes([d.0[8], d.0[9]]) as usize & (SHARDS - 1)
}

impl<V: Clone + Default> Table<V> {
    fn capacity_for(n: usize) -> usize {
        (n * 8 / MAX_LOAD_EIGHTHS).max(8) + 1
    }

    fn with_capacity(cap: usize) -> Self {
        Table {
            slots: (0..cap).map(|_| Slot::default()).collect(),
            len: 0,
        }
    }

    #[inline]
    fn get(&self, d: &Digest) -> Option<&V> {
        let cap = self.slots.len();
        let key = prefix(d);
        if cap == 0 || key == EMPTY {
            return None;
        }
        let mut i = first_slot(d, cap);
        loop {
            let slot = &self.slots[i];
            if slot.key == key {
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
    fn put(&mut self, d: &Digest, key: Prefix, v: V) -> Option<V> {
        let cap = self.slots.len();
        let mut i = first_slot(d, cap);
        loop {
            let slot = &mut self.slots[i];
            if slot.key == key {
                return Some(std::mem::replace(&mut slot.value, v));
            }
            if slot.key == EMPTY {
                *slot = Slot { key, value: v };
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
        for slot in std::mem::take(&mut self.slots).into_vec() {
            if slot.key != EMPTY {
                // The first slot depends only on the leading bytes, which the
                // prefix keeps.
                let mut d = Digest([0; 32]);
                d.0[..16].copy_from_slice(&slot.key);
                t.put(&d, slot.key, slot.value);
            }
        }
        t
    }

    fn insert(&mut self, d: &Digest, v: V) -> Option<V> {
        let key = prefix(d);
        debug_assert_ne!(key, EMPTY, "callers filter the empty prefix");
        if (self.len + 1) * 8 > self.slots.len() * MAX_LOAD_EIGHTHS {
            *self = self.rebuilt(Self::capacity_for((self.len + 1) * 2));
        }
        self.put(d, key, v)
    }
}

/// Digests to entries, sharded and copy-on-write. See the module docs.
pub struct DigestMap<V> {
    shards: Arc<[Arc<Table<V>>]>,
    len: usize,
}

impl<V> Clone for DigestMap<V> {
    fn clone(&self) -> Self {
        DigestMap {
            shards: Arc::clone(&self.shards),
            len: self.len,
        }
    }
}

impl<V: Clone + Default> Default for DigestMap<V> {
    fn default() -> Self {
        DigestMap {
            shards: (0..SHARDS).map(|_| Arc::new(Table::default())).collect(),
            len: 0,
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
        for shard in shards.iter_mut() {
            let want = Table::<V>::capacity_for(shard.len);
            if shard.slots.len() > want {
                let t = Arc::make_mut(shard);
                *t = t.rebuilt(want);
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

    /// Looks a digest up: one shard pointer, then (usually) one slot.
    #[inline]
    pub fn get(&self, d: &Digest) -> Option<&V> {
        self.shards[shard_of(d)].get(d)
    }

    /// Inserts or replaces, copying the shard array and one shard if another
    /// snapshot shares them.
    pub fn insert(&mut self, d: Digest, v: V) -> Option<V> {
        if prefix(&d) == EMPTY {
            // Never stored: see the module documentation.
            return None;
        }
        let shards = Arc::make_mut(&mut self.shards);
        let old = Arc::make_mut(&mut shards[shard_of(&d)]).insert(&d, v);
        if old.is_none() {
            self.len += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(i: u64) -> Digest {
        Digest(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    #[test]
    fn inserts_replaces_and_finds_everything() {
        let mut m: DigestMap<u64> = DigestMap::new();
        for i in 0..20_000 {
            assert_eq!(m.insert(digest(i), i), None);
        }
        assert_eq!(m.insert(digest(7), 70), Some(7));
        assert_eq!(m.len(), 20_000);
        for i in 0..20_000 {
            let want = if i == 7 { 70 } else { i };
            assert_eq!(m.get(&digest(i)), Some(&want));
        }
        for i in 20_000..21_000 {
            assert_eq!(m.get(&digest(i)), None);
        }
        assert_eq!(m.values().count(), 20_000);
    }

    #[test]
    fn compacting_keeps_every_entry_and_frees_slots() {
        let mut built = DigestMap::new();
        for i in 0..5000 {
            built.insert(digest(i), i);
        }
        let before: usize = built.shards.iter().map(|t| t.slots.len()).sum();
        built.compact();
        let after: usize = built.shards.iter().map(|t| t.slots.len()).sum();
        assert!(after <= before);
        assert_eq!(built.len(), 5000);
        for i in 0..5000 {
            assert_eq!(built.get(&digest(i)), Some(&i));
        }
        assert_eq!(built.get(&digest(99_999)), None);
    }

    #[test]
    fn clones_do_not_see_later_changes_and_share_untouched_shards() {
        let mut a = DigestMap::new();
        for i in 0..5000 {
            a.insert(digest(i), i);
        }
        let b = a.clone();
        a.insert(digest(1), 100);
        a.insert(digest(123_456), 1);
        assert_eq!(b.get(&digest(1)), Some(&1));
        assert_eq!(b.get(&digest(123_456)), None);
        assert_eq!(a.get(&digest(1)), Some(&100));
        let shared = a
            .shards
            .iter()
            .zip(b.shards.iter())
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(shared >= SHARDS - 2, "{shared} shards shared");
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
        assert_eq!(m.insert(d, 1), None);
        assert_eq!(m.get(&d), None);
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn an_empty_shard_grows_from_nothing() {
        let mut t: Table<u8> = Table::default();
        assert_eq!(t.get(&digest(1)), None);
        for i in 0..100 {
            t.insert(&digest(i), i as u8);
        }
        assert!(t.len * 8 <= t.slots.len() * MAX_LOAD_EIGHTHS);
        assert_eq!(t.get(&digest(50)), Some(&50));
    }
}
