//! Hash maps keyed by identifiers, for the maps that grow with every order.
//!
//! A shop's orders, and what the views keep per order and per customer, grow to millions
//! of entries on a promotion day. A `BTreeMap` keyed by string ids walks about twenty
//! nodes and compares a string at each; a hash map hashes the id once. Identifiers come
//! from callers, so the hasher is seeded at random per map (`foldhash`), which keeps
//! chosen collisions impractical.
//!
//! Iteration order is unspecified. Serialization is not: [`sorted_map`] and [`sorted_set`]
//! write entries in key order, so a snapshot or a state hash depends on the contents
//! alone, never on the seed or on the order of insertion.
//!
//! The seed is the domain's one random number, and nothing shows it: no decision, event,
//! comparison or serialization depends on iteration order. The maps live in the domain
//! because its state is made of them; the memory layer builds its packed and tiered maps on
//! them.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use serde::{Serialize, Serializer};

/// The randomly seeded hasher of every [`IdMap`] and [`IdSet`].
pub type IdHasher = foldhash::fast::RandomState;

/// A hash map keyed by an identifier.
pub type IdMap<K, V> = HashMap<K, V, IdHasher>;

/// A hash set of identifiers.
pub type IdSet<K> = HashSet<K, IdHasher>;

/// Tables of at most this capacity are never shrunk: they cost little, and a map that
/// empties and fills again around a small size should not rehash every time.
pub const SHRINK_CAPACITY_MIN: usize = 1 << 12;

/// Gives a map's table back once it is three quarters empty.
///
/// A hash table never shrinks on removal, so a map of open orders that held millions at a
/// day's peak would keep its peak table after they shipped. Call this after removing:
/// below a quarter full (and above [`SHRINK_CAPACITY_MIN`]), the table is rebuilt for
/// twice its entries. It is not rebuilt again before half of those are removed, so the
/// rebuilds cost O(1) per removal, amortized.
pub fn shrink_if_sparse<K: Hash + Eq, V>(map: &mut IdMap<K, V>) {
    let capacity = map.capacity();
    if let Some(room) = shrunk_room(map.len(), capacity) {
        map.shrink_to(room);
        debug_assert!(map.capacity() < capacity, "shrinking gave memory back");
    }
}

/// The room to shrink a table of `capacity` holding `len` entries to, when it should be
/// shrunk ([`shrink_if_sparse`]'s rule, which [`crate::memory::packed::PackedMap`] follows too).
pub fn shrunk_room(len: usize, capacity: usize) -> Option<usize> {
    (capacity > SHRINK_CAPACITY_MIN && len < capacity / 4).then(|| len.saturating_mul(2))
}

/// Serializes a map as a map in key order, exactly as a `BTreeMap` of it would be.
pub fn sorted_map<K: Ord + Serialize, V: Serialize, S: Serializer>(
    map: &IdMap<K, V>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut entries: Vec<(&K, &V)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    serializer.collect_map(entries)
}

/// Serializes a set as a sequence in order, exactly as a `BTreeSet` of it would be.
pub fn sorted_set<K: Ord + Serialize, S: Serializer>(set: &IdSet<K>, serializer: S) -> Result<S::Ok, S::Error> {
    let mut keys: Vec<&K> = set.iter().collect();
    keys.sort_unstable();
    serializer.collect_seq(keys)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// A map that grew large and emptied gives its table back, keeps its entries, and
    /// still takes new ones; a small map keeps its table.
    #[test]
    fn a_map_three_quarters_empty_is_shrunk() {
        let mut map: IdMap<u64, u64> = (0..100_000).map(|n| (n, n * 2)).collect();
        let peak = map.capacity();
        for n in 0..99_000 {
            assert_eq!(map.remove(&n), Some(n * 2));
            shrink_if_sparse(&mut map);
            assert!(map.len() >= map.capacity() / 4 || map.capacity() <= SHRINK_CAPACITY_MIN);
        }
        assert!(map.capacity() < peak / 16, "{} of {peak}", map.capacity());
        assert!((99_000..100_000).all(|n| map.get(&n) == Some(&(n * 2))));
        map.extend((0..10).map(|n| (n, n)));
        assert_eq!(map.len(), 1_010);
        let mut small: IdMap<u64, u64> = (0..1_000).map(|n| (n, n)).collect();
        small.retain(|n, _| *n == 0);
        // Read after removing: removal alone may change the capacity reported (a removed
        // entry can leave a tombstone, which no insert may take without a rehash).
        let capacity = small.capacity();
        shrink_if_sparse(&mut small);
        assert_eq!(small.capacity(), capacity);
    }

    #[derive(Serialize)]
    struct Maps {
        #[serde(serialize_with = "sorted_map")]
        map: IdMap<String, u64>,
        #[serde(serialize_with = "sorted_set")]
        set: IdSet<String>,
    }

    #[derive(Serialize)]
    struct Trees {
        map: BTreeMap<String, u64>,
        set: BTreeSet<String>,
    }

    /// Whatever the seed and the order of insertion, the bytes are those of the ordered
    /// collections.
    #[test]
    fn serializes_in_key_order_whatever_the_insertion_order() {
        let keys: Vec<String> = (0..500u64).map(|n| format!("order-{}", (n * 7919) % 1000)).collect();
        let trees = Trees {
            map: keys.iter().enumerate().map(|(i, k)| (k.clone(), i as u64)).collect(),
            set: keys.iter().cloned().collect(),
        };
        let expected = postcard::to_allocvec(&trees).expect("encodes");
        for reversed in [false, true] {
            let mut ordered: Vec<(usize, &String)> = keys.iter().enumerate().collect();
            if reversed {
                ordered.reverse();
            }
            let maps = Maps {
                map: ordered.iter().map(|(i, k)| ((*k).clone(), *i as u64)).collect(),
                set: ordered.iter().map(|(_, k)| (*k).clone()).collect(),
            };
            assert_eq!(postcard::to_allocvec(&maps).expect("encodes"), expected, "reversed {reversed}");
        }
    }
}
