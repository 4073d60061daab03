//! Remembered command ids, in generations of engine time.
//!
//! The engine remembers every command id it decided for a window of engine time, so that
//! a retry is answered as before. On a promotion day that is millions of ids, so how they
//! are forgotten matters as much as how they are found.
//!
//! Guarantees:
//! - An id remembered at time `t` is kept while the horizon passed to
//!   [`Remembered::forget_before`] is at most `t`: never forgotten early.
//! - It is gone once the horizon passes `t + span_ms`, where the span is the window cut
//!   into [`GENERATIONS`]: with the horizon at `now - window`, an id is remembered for at
//!   least the window and at most an eighth longer.
//!
//! Ids are kept in one map per generation, each covering `span_ms` of time from its first
//! id, and each a [`PackedMap`], since a burst of millions of commands lands in one
//! generation. Forgetting drops whole generations, so no id is kept twice (as it would be
//! in a map and a queue of ids by time) and nothing is removed one by one. A lookup that
//! misses probes every generation, at most `GENERATIONS + 2`.

use std::collections::VecDeque;
use std::hash::Hash;

use crate::domain::ids::Timestamp;
use crate::memory::packed::PackedMap;

/// How many generations a window is cut into.
pub const GENERATIONS: u64 = 8;

/// Ids and what is remembered of them, by generation.
#[derive(Debug)]
pub struct Remembered<K, V> {
    /// Oldest first; each generation's ids were remembered in `[start, start + span_ms)`,
    /// except ids older than the oldest generation, which join it.
    generations: VecDeque<Generation<K, V>>,
    span_ms: u64,
}

#[derive(Debug)]
struct Generation<K, V> {
    start: Timestamp,
    entries: PackedMap<K, V>,
}

impl<K: Hash + Eq, V> Remembered<K, V> {
    /// Nothing remembered yet, for a window of `window_ms`.
    pub fn new(window_ms: u64) -> Remembered<K, V> {
        Remembered { generations: VecDeque::new(), span_ms: window_ms.div_ceil(GENERATIONS).max(1) }
    }

    /// What is remembered of `key`, newest generation first.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.generations.iter().rev().find_map(|generation| generation.entries.get(key))
    }

    /// What is remembered of `key`, to change it.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.generations.iter_mut().rev().find_map(|generation| generation.entries.get_mut(key))
    }

    /// Remembers `value` for `key` at time `at`, replacing what was remembered of it.
    pub fn remember(&mut self, at: Timestamp, key: K, value: V) {
        match self.get_mut(&key) {
            Some(known) => *known = value,
            None => self.remember_new(at, key, value),
        }
    }

    /// Remembers `value` for `key` at time `at`. Precondition: nothing is remembered of
    /// `key`, as a lookup just found; this does not probe every generation again.
    pub fn remember_new(&mut self, at: Timestamp, key: K, value: V) {
        debug_assert!(self.get(&key).is_none(), "remembered once");
        let span_ms = self.span_ms;
        // The oldest generation that has not ended by `at`: never one that ends before it.
        let index = self.generations.iter().position(|generation| at.0 < generation.start.0.saturating_add(span_ms));
        let index = index.unwrap_or_else(|| {
            assert!(self.generations.back().is_none_or(|newest| newest.start < at), "generations start in order");
            self.generations.push_back(Generation { start: at, entries: PackedMap::new() });
            self.generations.len() - 1
        });
        self.generations[index].entries.insert(key, value);
    }

    /// Forgets `key`, wherever it is remembered; what was remembered of it.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.generations.iter_mut().rev().find_map(|generation| generation.entries.remove(key))
    }

    /// Forgets every generation that ended by `horizon`: all its ids are older.
    pub fn forget_before(&mut self, horizon: Timestamp) {
        while self.generations.front().is_some_and(|oldest| oldest.start.0.saturating_add(self.span_ms) <= horizon.0) {
            self.generations.pop_front();
        }
    }

    /// How many generations are kept.
    pub fn generations(&self) -> usize {
        self.generations.len()
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.generations.iter().map(|generation| generation.entries.len()).sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.generations.iter().all(|generation| generation.entries.is_empty())
    }

    /// Every id with its generation's start, oldest generation first. Remembering them in
    /// that order rebuilds the same generations.
    pub fn iter(&self) -> impl Iterator<Item = (Timestamp, &K, &V)> {
        self.generations
            .iter()
            .flat_map(|generation| generation.entries.iter().map(move |(key, value)| (generation.start, key, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers `(at, key)` in order with a window of 80 ms (spans of 10), forgets before
    /// `horizon`, and checks which keys are still known and how many generations hold them.
    fn check(remember: &[(u64, u32)], horizon: u64, known: &[u32], generations: usize) {
        let mut remembered = Remembered::new(80);
        for (at, key) in remember {
            remembered.remember(Timestamp(*at), *key, *at);
        }
        remembered.forget_before(Timestamp(horizon));
        let mut keys: Vec<u32> = remembered.iter().map(|(_, key, _)| *key).collect();
        keys.sort_unstable();
        assert_eq!(keys, known, "remembered {remember:?}, horizon {horizon}");
        assert_eq!(remembered.generations(), generations, "remembered {remember:?}, horizon {horizon}");
        assert_eq!(remembered.len(), known.len());
        for (at, key) in remember {
            assert_eq!(remembered.get(key).is_some(), known.contains(key));
            // Never forgotten early.
            assert!(*at < horizon || remembered.get(key).is_some(), "{key} at {at} forgotten before {horizon}");
        }
    }

    #[test]
    fn ids_are_kept_for_the_window_and_at_most_a_span_longer() {
        check(&[], 1_000, &[], 0);
        // One generation, from 0 to 10: kept until the horizon reaches 10.
        check(&[(0, 1), (9, 2)], 9, &[1, 2], 1);
        check(&[(0, 1), (9, 2)], 10, &[], 0);
        // A new generation starts at the first id after the span: 10 to 20, then 25 to 35.
        check(&[(0, 1), (10, 2), (19, 3), (25, 4)], 10, &[2, 3, 4], 2);
        check(&[(0, 1), (10, 2), (19, 3), (25, 4)], 20, &[4], 1);
        check(&[(0, 1), (10, 2), (19, 3), (25, 4)], 34, &[4], 1);
        check(&[(0, 1), (10, 2), (19, 3), (25, 4)], 35, &[], 0);
        // Out of order (recovery's rejections): an id joins a generation that has not ended
        // by its time, so it is never forgotten before its own time.
        check(&[(0, 1), (25, 2), (12, 3)], 10, &[2, 3], 1);
        check(&[(0, 1), (25, 2), (5, 3)], 10, &[2], 1);
        check(&[(20, 1), (3, 2)], 29, &[1, 2], 1);
        // A day of ids, one a millisecond: at most the window's generations and two more.
        let day: Vec<(u64, u32)> = (0..500).map(|at| (at, at as u32)).collect();
        check(&day, 420, &(420..500).collect::<Vec<u32>>(), 8);
    }

    #[test]
    fn remembering_again_replaces_in_place() {
        let mut remembered = Remembered::new(80);
        remembered.remember(Timestamp(0), "a", 1);
        remembered.remember(Timestamp(50), "b", 2);
        remembered.remember(Timestamp(60), "a", 3);
        assert_eq!((remembered.get(&"a"), remembered.len(), remembered.generations()), (Some(&3), 2, 2));
        if let Some(value) = remembered.get_mut(&"b") {
            *value = 4;
        }
        let entries: Vec<(u64, &str, i32)> = remembered.iter().map(|(at, key, value)| (at.0, *key, *value)).collect();
        assert_eq!(entries, [(0, "a", 3), (50, "b", 4)]);
        // Rebuilt from `iter`, the generations are the same.
        let mut rebuilt = Remembered::new(80);
        for (at, key, value) in remembered.iter() {
            rebuilt.remember(at, *key, *value);
        }
        assert_eq!(rebuilt.iter().collect::<Vec<_>>(), remembered.iter().collect::<Vec<_>>());
        assert!(!rebuilt.is_empty() && Remembered::<u8, u8>::new(0).is_empty());
        // A new key goes into the generation for its time, as `remember` puts it.
        rebuilt.remember_new(Timestamp(55), "c", 5);
        assert_eq!((rebuilt.get(&"c"), rebuilt.len(), rebuilt.generations()), (Some(&5), 3, 2));
    }
}
