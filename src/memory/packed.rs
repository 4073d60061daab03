//! A hash map for the maps that hold millions of entries, with its slack in 4-byte indices.
//!
//! A hash table has a power of two of buckets and is between 44% and 87.5% full, and a
//! `HashMap` keeps each entry inline in its bucket. A map of millions of 48-byte entries
//! can therefore carry almost as many bytes of empty buckets as of entries. A [`PackedMap`]
//! keeps its entries in chunks of [`CHUNK_ENTRIES`], filled in order and never moved once
//! full, and its table holds only `u32` indices into them: the empty buckets cost 5 bytes
//! each instead of the entry's size plus one.
//!
//! Guarantees and costs:
//! - The same contents make equal maps, and serialization writes entries in key order
//!   (exactly as a `BTreeMap` of them), whatever the hasher's seed or the order of
//!   insertion. The hasher is seeded at random, as [`crate::domain::idmap`]'s are.
//! - A lookup reads the index, then the entry: one memory access more than a `HashMap`.
//! - Removal moves the last entry into the hole and finds that entry's index by its hash.
//!   The table is rebuilt smaller once it is three quarters empty.
//! - At most `u32::MAX` entries: inserting more panics.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;

use hashbrown::HashTable;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::idmap::{IdHasher, shrunk_room};

/// Entries per chunk: a power of two. Only the first chunk grows by reallocating.
pub const CHUNK_ENTRIES: usize = 1 << 14;

/// How many entries a deserialized map reserves room for up front, whatever its input
/// claims.
const RESERVE_ENTRIES_MAX: usize = 1 << 16;

/// A hash map whose entries live in chunks and whose table holds indices into them.
#[derive(Clone)]
pub struct PackedMap<K, V> {
    /// The position of every entry in `chunks`, found by the hash of its key.
    index: HashTable<u32>,
    /// Entries in order of their positions; every chunk but the last is full.
    chunks: Vec<Vec<(K, V)>>,
    len: usize,
    hasher: IdHasher,
}

impl<K, V> Default for PackedMap<K, V> {
    fn default() -> Self {
        PackedMap { index: HashTable::new(), chunks: Vec::new(), len: 0, hasher: IdHasher::default() }
    }
}

fn at<K, V>(chunks: &[Vec<(K, V)>], position: u32) -> &(K, V) {
    let position = position as usize;
    &chunks[position / CHUNK_ENTRIES][position % CHUNK_ENTRIES]
}

fn at_mut<K, V>(chunks: &mut [Vec<(K, V)>], position: u32) -> &mut (K, V) {
    let position = position as usize;
    &mut chunks[position / CHUNK_ENTRIES][position % CHUNK_ENTRIES]
}

/// The hash of the entry at a position, for the table to place it when it is rebuilt.
fn rehash<'a, K: Hash, V>(chunks: &'a [Vec<(K, V)>], hasher: &'a IdHasher) -> impl Fn(&u32) -> u64 + 'a {
    move |&position| hasher.hash_one(&at(chunks, position).0)
}

impl<K, V> PackedMap<K, V> {
    /// An empty map.
    pub fn new() -> PackedMap<K, V> {
        PackedMap::default()
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.chunks.iter().flatten().map(|(key, value)| (key, value))
    }

    /// Every key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(key, _)| key)
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, value)| value)
    }
}

impl<K: Hash + Eq, V> PackedMap<K, V> {
    fn position<Q>(&self, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.position_hashed(self.hasher.hash_one(key), key)
    }

    /// [`PackedMap::position`] of a key whose hash is known.
    fn position_hashed<Q>(&self, hash: u64, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let chunks = &self.chunks;
        self.index.find(hash, |&position| at(chunks, position).0.borrow() == key).copied()
    }

    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.position(key).map(|position| &at(&self.chunks, position).1)
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.position(key).is_some()
    }

    /// The value of `key`, to change it.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let position = self.position(key)?;
        Some(&mut at_mut(&mut self.chunks, position).1)
    }

    /// The value of `key`, to change it; `make` gives it one first if it has none (and the
    /// key is cloned only then).
    pub fn get_or_insert_with(&mut self, key: &K, make: impl FnOnce() -> V) -> &mut V
    where
        K: Clone,
    {
        let hash = self.hasher.hash_one(key);
        let position = match self.position_hashed(hash, key) {
            Some(position) => position,
            None => self.insert_new(hash, key.clone(), make()),
        };
        let entry = at_mut(&mut self.chunks, position);
        debug_assert!(entry.0 == *key, "the entry of the key");
        &mut entry.1
    }

    /// Sets the value of `key`; returns the one it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let hash = self.hasher.hash_one(&key);
        match self.position_hashed(hash, &key) {
            Some(position) => Some(std::mem::replace(&mut at_mut(&mut self.chunks, position).1, value)),
            None => {
                self.insert_new(hash, key, value);
                None
            }
        }
    }

    /// Adds an entry for `key`, which has none and hashes to `hash`; returns its position.
    fn insert_new(&mut self, hash: u64, key: K, value: V) -> u32 {
        let position =
            u32::try_from(self.len).unwrap_or_else(|_| panic!("a packed map holds at most u32::MAX entries"));
        self.push((key, value));
        self.index.insert_unique(hash, position, rehash(&self.chunks, &self.hasher));
        debug_assert_eq!(self.index.len(), self.len, "an index per entry");
        position
    }

    /// Appends an entry at the next position, in the last chunk or a new one.
    fn push(&mut self, entry: (K, V)) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK_ENTRIES => {
                if chunk.len() == chunk.capacity() {
                    // Only the first chunk starts small; it doubles up to a full chunk.
                    chunk.reserve_exact(chunk.capacity().max(4).min(CHUNK_ENTRIES - chunk.len()));
                }
                chunk.push(entry);
            }
            _ => {
                let mut chunk = Vec::with_capacity(if self.chunks.is_empty() { 4 } else { CHUNK_ENTRIES });
                chunk.push(entry);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
        debug_assert!(self.chunks.iter().rev().skip(1).all(|chunk| chunk.len() == CHUNK_ENTRIES));
    }

    /// Removes the entry of `key`; returns its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let chunks = &self.chunks;
        let found =
            self.index.find_entry(self.hasher.hash_one(key), |&position| at(chunks, position).0.borrow() == key);
        let (position, _) = found.ok()?.remove();
        // `len` fits a u32: every position does.
        let last = (self.len - 1) as u32;
        let Some(tail) = self.chunks.last_mut().and_then(Vec::pop) else {
            unreachable!("a map with an entry has a chunk with an entry")
        };
        if self.chunks.last().is_some_and(Vec::is_empty) {
            self.chunks.pop();
        }
        self.len -= 1;
        let removed = if position == last {
            tail
        } else {
            // The last entry fills the hole: its index now says `position`.
            let moved = self.hasher.hash_one(&tail.0);
            let Some(index) = self.index.find_mut(moved, |&other| other == last) else {
                unreachable!("every entry has an index")
            };
            *index = position;
            std::mem::replace(at_mut(&mut self.chunks, position), tail)
        };
        if let Some(room) = shrunk_room(self.len, self.index.capacity()) {
            self.index.shrink_to(room, rehash(&self.chunks, &self.hasher));
        }
        debug_assert_eq!(self.index.len(), self.len, "an index per entry");
        Some(removed.1)
    }
}

impl<K: Hash + Eq, V> FromIterator<(K, V)> for PackedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let mut map = PackedMap::new();
        for (key, value) in entries {
            map.insert(key, value);
        }
        map
    }
}

impl<K: Hash + Eq, V: PartialEq> PartialEq for PackedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(key, value)| other.get(key) == Some(value))
    }
}

impl<K: Hash + Eq, V: Eq> Eq for PackedMap<K, V> {}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for PackedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// As a map in key order, exactly as a `BTreeMap` of the same entries.
impl<K: Hash + Eq + Ord + Serialize, V: Serialize> Serialize for PackedMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut entries: Vec<(&K, &V)> = self.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        serializer.collect_map(entries)
    }
}

impl<'de, K: Hash + Eq + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for PackedMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Hash + Eq + Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for Entries<K, V> {
            type Value = PackedMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Self::Value, A::Error> {
                let mut map = PackedMap::new();
                let room = entries.size_hint().unwrap_or(0).min(RESERVE_ENTRIES_MAX);
                map.index.reserve(room, rehash(&map.chunks, &map.hasher));
                while let Some((key, value)) = entries.next_entry()? {
                    map.insert(key, value);
                }
                Ok(map)
            }
        }
        deserializer.deserialize_map(Entries(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A model check: any sequence of inserts and removes leaves the map holding what a
    /// `BTreeMap` given the same holds, across several chunks and shrinks; and it
    /// serializes as that `BTreeMap` does.
    #[test]
    fn behaves_as_a_btree_map_through_inserts_and_removes() {
        let mut map: PackedMap<String, u64> = PackedMap::new();
        let mut model: BTreeMap<String, u64> = BTreeMap::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let keys_max = 3 * CHUNK_ENTRIES as u64;
        for step in 0..200_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let key = format!("order-{}", seed % keys_max);
            // Mostly inserts for the first half, mostly removals after.
            let insert = (seed >> 32) % 10 < if step < 100_000 { 8 } else { 1 };
            if insert && step % 3 == 0 {
                *map.get_or_insert_with(&key, || step) += 1;
                *model.entry(key).or_insert(step) += 1;
            } else if insert {
                assert_eq!(map.insert(key.clone(), step), model.insert(key, step));
            } else {
                assert_eq!(map.remove(key.as_str()), model.remove(&key));
            }
            assert_eq!(map.len(), model.len());
            if step % 20_000 == 0 {
                assert!(model.iter().all(|(key, value)| map.get(key.as_str()) == Some(value)));
            }
        }
        assert!(model.iter().all(|(key, value)| map.get(key.as_str()) == Some(value)));
        assert_eq!(map.iter().count(), model.len());
        let capacity_min = crate::domain::idmap::SHRINK_CAPACITY_MIN;
        assert!(map.index.capacity() < 4 * model.len().max(capacity_min), "the index shrank");
        let bytes = postcard::to_allocvec(&map).expect("encodes");
        assert_eq!(bytes, postcard::to_allocvec(&model).expect("encodes"));
        let back: PackedMap<String, u64> = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, map);
        let mut other = back.clone();
        if let Some(key) = model.keys().next() {
            *other.get_mut(key.as_str()).expect("present") += 1;
            assert_ne!(other, map);
        }
        while let Some((key, value)) = model.pop_first() {
            assert_eq!(map.remove(key.as_str()), Some(value));
        }
        assert!(map.is_empty() && map.chunks.is_empty());
    }
}
