//! A copy-on-write vector indexed by small dense numbers ("slots"): how a
//! key finds its creator, and a creator its organisation, with two plain
//! loads and no hashing.
//!
//! Slots are handed out in order and never reused within a snapshot
//! lineage: a deleted user's slot stays empty, so keys that still point at
//! it find nobody. Chunks of 256 are shared between snapshot versions; a
//! change copies the chunk array and one chunk.

use std::sync::Arc;

const CHUNK_BITS: u32 = 8;
const CHUNK: usize = 1 << CHUNK_BITS;

/// See the module documentation.
pub struct DenseVec<T> {
    chunks: Arc<[Arc<[T]>]>,
    len: u32,
}

impl<T> Clone for DenseVec<T> {
    fn clone(&self) -> Self {
        DenseVec {
            chunks: Arc::clone(&self.chunks),
            len: self.len,
        }
    }
}

impl<T: Clone + Default> Default for DenseVec<T> {
    fn default() -> Self {
        DenseVec {
            chunks: Arc::from(Vec::new()),
            len: 0,
        }
    }
}

impl<T: Clone + Default> DenseVec<T> {
    /// The element in `slot`, if the slot was ever handed out.
    #[inline]
    pub fn get(&self, slot: u32) -> Option<&T> {
        if slot >= self.len {
            return None;
        }
        let i = slot as usize;
        self.chunks
            .get(i >> CHUNK_BITS)
            .and_then(|c| c.get(i & (CHUNK - 1)))
    }

    /// Slots handed out so far (empty ones included).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether no slot was ever handed out.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a value in the next slot and returns that slot.
    pub fn push(&mut self, value: T) -> u32 {
        let slot = self.len;
        let i = slot as usize;
        if i >> CHUNK_BITS == self.chunks.len() {
            let mut chunks: Vec<Arc<[T]>> = self.chunks.iter().cloned().collect();
            chunks.push((0..CHUNK).map(|_| T::default()).collect());
            self.chunks = Arc::from(chunks);
        }
        self.len += 1;
        self.set(slot, value);
        slot
    }

    /// Replaces the value in a slot that was handed out.
    pub fn set(&mut self, slot: u32, value: T) {
        assert!(slot < self.len, "slot {slot} was never handed out");
        let i = slot as usize;
        let chunks = Arc::make_mut(&mut self.chunks);
        Arc::make_mut(&mut chunks[i >> CHUNK_BITS])[i & (CHUNK - 1)] = value;
    }

    /// Every handed-out slot's value, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .take(self.len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_get_set_across_chunks() {
        let mut v: DenseVec<Option<u32>> = DenseVec::default();
        for i in 0..1000 {
            assert_eq!(v.push(Some(i)), i);
        }
        assert_eq!(v.get(999), Some(&Some(999)));
        assert_eq!(v.get(1000), None);
        v.set(300, None);
        assert_eq!(v.get(300), Some(&None));
        assert_eq!(v.iter().flatten().count(), 999);
    }

    #[test]
    fn clones_are_isolated_and_share_untouched_chunks() {
        let mut a: DenseVec<Option<u32>> = DenseVec::default();
        for i in 0..1000 {
            a.push(Some(i));
        }
        let b = a.clone();
        a.set(5, Some(500));
        a.push(Some(1));
        assert_eq!(b.get(5), Some(&Some(5)));
        assert_eq!(b.len(), 1000);
        assert_eq!(a.get(5), Some(&Some(500)));
        let shared = a
            .chunks
            .iter()
            .zip(b.chunks.iter())
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        // Slot 5's chunk and the last chunk (where slot 1000 went) were copied.
        assert_eq!(shared, b.chunks.len() - 2);
    }
}
