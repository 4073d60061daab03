//! A map that keeps its newest entries as values and the rest encoded, for the maps that
//! grow with every order.
//!
//! Guarantees:
//! - It is one map: [`TieredMap::get`], iteration, equality, `Debug` and serialization see
//!   the same entries whichever tier holds them, and serialize exactly as
//!   [`crate::domain::idmap::sorted_map`] does, so a view snapshot or hash does not depend on the
//!   tiers. Only [`image`], for engine snapshots, writes the tiers as they are held.
//! - At most `hot_max` entries are kept as values (*hot*). Inserting an entry, or changing
//!   it through [`TieredMap::get_mut`], makes it hot; when that makes too many, the one made
//!   hot longest ago is encoded with [`crate::memory::pack`] (*frozen*). An encoded order is a small
//!   fraction of its size as a value.
//! - Reading a frozen entry decodes a copy and leaves it frozen. [`TieredMap::get_mut`]
//!   decodes it back into the hot tier; [`TieredMap::update`] changes it where it is, so a
//!   frozen entry stays frozen and no other entry freezes for it.
//!   [`TieredMap::update_or_append`] lets the owner append the change to the entry's bytes
//!   instead, without decoding it; the entry's type ([`Entry::thaw`]) applies what was
//!   appended when it is next decoded, and bounds how much may be.
//! - With a [`Spill`] attached, the owner's shell may move frozen entries out of memory
//!   ([`TieredMap::spill_frozen`]); only each one's [`Spot`] stays (*spilled*). Serialization,
//!   equality and [`TieredMap::fetch`] read spilled entries back, and report a failed read.
//!
//! The map itself does no IO except in those named, fallible methods. In particular
//! [`TieredMap::get`] and [`TieredMap::get_mut`], which a pure core calls, never read the
//! spill: the shell first [`TieredMap::load`]s what the core will touch, and reaching a
//! spilled entry there is a broken invariant (a panic). The tiering is a cache policy,
//! decided by the order of changes alone, so folding the same events gives the same hot and
//! frozen tiers; which frozen entries are spilled depends on when the shell spilled.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::hash::Hash;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::{DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::idmap::{IdMap, IdSet};
use crate::memory::pack::{Entry, Pack};
use crate::memory::packed::PackedMap;
use crate::memory::spill::{Spill, Spot};

/// Hot entries kept unless the owner sets another bound.
pub const HOT_DEFAULT_MAX: usize = 65_536;

/// A map whose oldest-changed entries are kept encoded. See the module documentation.
pub struct TieredMap<K, V> {
    /// Every entry held in memory, hot or frozen, in one table: however an entry is held,
    /// reaching it, freezing it or changing it frozen hashes its key once.
    entries: IdMap<K, Slot<V>>,
    /// Frozen entries moved to `spill`, by where they are there. Packed: after a busy day
    /// this holds nearly every order.
    spilled: PackedMap<K, Spot>,
    /// The hot keys, each once, in the order they became hot: its length is how many
    /// entries are hot, and every other entry in `entries` is frozen.
    queue: VecDeque<K>,
    hot_max: usize,
    /// Where frozen entries may move; set by the owner's shell.
    spill: Option<Arc<Spill>>,
    /// With a spill attached, the keys frozen in memory since the last spill: what
    /// [`TieredMap::spill_frozen`] moves, without a scan of the hot entries (an owner that
    /// spills after every batch would scan them all each time). A key here may since have
    /// been made hot again, or be here twice; those are skipped.
    unspilled: Vec<K>,
    /// Where an entry is encoded before it is copied out at its size; not part of the map.
    scratch: Vec<u8>,
}

/// How an entry held in memory is held. A hot value is boxed so that the table's slots stay
/// the size of a frozen one's: after a busy day nearly every slot is frozen.
#[derive(Clone)]
enum Slot<V> {
    Hot(Box<V>),
    Frozen(Box<[u8]>),
}

impl<K, V> Default for TieredMap<K, V> {
    fn default() -> Self {
        TieredMap {
            entries: IdMap::default(),
            spilled: PackedMap::new(),
            queue: VecDeque::new(),
            hot_max: HOT_DEFAULT_MAX,
            spill: None,
            unspilled: Vec::new(),
            scratch: Vec::new(),
        }
    }
}

impl<K, V> TieredMap<K, V>
where
    K: Hash + Eq + Clone,
    V: Entry,
{
    /// An empty map keeping at most `hot_max` (at least 1) entries as values.
    pub fn with_hot_max(hot_max: usize) -> Self {
        TieredMap { hot_max: hot_max.max(1), ..TieredMap::default() }
    }

    /// Keeps at most `hot_max` (at least 1) entries as values from now on, freezing the
    /// oldest beyond it.
    pub fn set_hot_max(&mut self, hot_max: usize) {
        self.hot_max = hot_max.max(1);
        self.freeze_excess();
    }

    /// Reads the entry of `key` where it is held, without decoding or changing it, for an
    /// owner about to change it: `peek` of a hot value, the first byte of a frozen one, 0
    /// when it is spilled or missing. An owner that reads ahead the entries of its next few
    /// changes this way has their fetches from memory overlap, instead of each change
    /// waiting for its own in turn.
    pub fn prefetch(&self, key: &K, peek: impl FnOnce(&V) -> u8) -> u8 {
        match self.entries.get(key) {
            Some(Slot::Hot(value)) => peek(value),
            Some(Slot::Frozen(bytes)) => bytes.first().copied().unwrap_or(0),
            None => 0,
        }
    }

    /// Entries in every tier.
    pub fn len(&self) -> usize {
        self.entries.len() + self.spilled.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries kept encoded, in memory or spilled.
    pub fn frozen_len(&self) -> usize {
        self.entries.len() - self.queue.len() + self.spilled.len()
    }

    /// Entries spilled: out of memory but for where they are.
    pub fn spilled_len(&self) -> usize {
        self.spilled.len()
    }

    /// Whether `key` has an entry.
    pub fn contains_key(&self, key: &K) -> bool {
        self.entries.contains_key(key) || self.spilled.contains_key(key)
    }

    /// The entry of `key`: borrowed when hot, a decoded copy when frozen.
    ///
    /// Panics when the entry is spilled: [`TieredMap::load`] it first, or [`TieredMap::fetch`].
    pub fn get(&self, key: &K) -> Option<Cow<'_, V>> {
        match self.entries.get(key) {
            Some(slot) => Some(slot.value()),
            None => {
                assert!(!self.spilled.contains_key(key), "a spilled entry is read without being loaded first");
                None
            }
        }
    }

    /// The entry of `key` to change, made hot first.
    ///
    /// Panics when the entry is spilled: [`TieredMap::load`] it first.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let Some(slot) = self.entries.get_mut(key) else {
            assert!(!self.spilled.contains_key(key), "a spilled entry is changed without being loaded first");
            return None;
        };
        if let Slot::Frozen(bytes) = slot {
            *slot = Slot::Hot(Box::new(thaw(bytes)));
            self.queue.push_back(key.clone());
            // `key` is the newest hot entry and at least one stays hot: it is not frozen.
            self.freeze_excess();
        }
        match self.entries.get_mut(key) {
            Some(Slot::Hot(value)) => Some(value),
            _ => unreachable!("the entry just made hot is hot"),
        }
    }

    /// Changes the entry of `key` with `change` in the tier that holds it, and returns what
    /// `change` returned: a hot entry is changed as it is; a frozen one is decoded, changed
    /// and encoded again in its place, and stays frozen, so no other entry freezes for it.
    /// `None` (and `change` is not called) when there is no entry.
    ///
    /// For entries whose next change is usually further away than the hot tier reaches:
    /// making such an entry hot only pushes out another that will not be needed soon either,
    /// at the cost of encoding that one and the hash tables' churn.
    ///
    /// Panics when the entry is spilled: [`TieredMap::load`] it first.
    pub fn update<R>(&mut self, key: &K, change: impl FnOnce(&mut V) -> R) -> Option<R> {
        self.update_or_append(key, change, |_, _| None)
    }

    /// Like [`TieredMap::update`], except that a frozen entry is first offered to `append`:
    /// given the entry's bytes (moved out of their box, not copied) and an empty scratch
    /// buffer, it changes the bytes in place (the change appended to the entry, for
    /// [`Entry::thaw`] to apply when the entry is next read) and returns what `change` would
    /// have, or declines with `None` and leaves them as they were, and then the entry is
    /// decoded, changed by `change` and encoded again in its place. Neither is called when
    /// there is no entry. The bytes are boxed again at their length, so `append` should grow
    /// them by exactly what it adds (`Vec::reserve_exact`): they are then copied at most
    /// once, by the one reallocation.
    ///
    /// For changes to frozen entries that are written far more often than they are read:
    /// a promotion day's shipments and deliveries, replayed, change orders nothing reads
    /// before the fold ends.
    ///
    /// Panics when the entry is spilled: [`TieredMap::load`] it first.
    pub fn update_or_append<R>(
        &mut self,
        key: &K,
        change: impl FnOnce(&mut V) -> R,
        append: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>) -> Option<R>,
    ) -> Option<R> {
        let Some(slot) = self.entries.get_mut(key) else {
            assert!(!self.spilled.contains_key(key), "a spilled entry is changed without being loaded first");
            return None;
        };
        let bytes = match slot {
            Slot::Hot(value) => return Some(change(value)),
            Slot::Frozen(bytes) => bytes,
        };
        let mut owned = std::mem::take(bytes).into_vec();
        let length_before = owned.len();
        self.scratch.clear();
        let appended = append(&mut owned, &mut self.scratch);
        assert!(appended.is_some() || owned.len() == length_before, "a declined append leaves the entry as it was");
        *bytes = owned.into_boxed_slice();
        if let Some(changed) = appended {
            debug_assert!(V::thaw(bytes).is_ok(), "a frozen entry with a change appended thaws");
            return Some(changed);
        }
        let mut value: V = thaw(bytes);
        let changed = change(&mut value);
        *bytes = crate::memory::pack::pack(&value, &mut self.scratch);
        debug_assert!(V::thaw(bytes).is_ok(), "a frozen entry unpacks");
        Some(changed)
    }

    /// The bytes of the entry of `key` when it is frozen in memory.
    #[cfg(test)]
    pub(crate) fn frozen_bytes(&self, key: &K) -> Option<&[u8]> {
        self.entries.get(key).and_then(Slot::frozen)
    }

    /// Inserts or replaces the entry of `key`, hot. Returns whether it had one.
    pub fn insert(&mut self, key: K, value: V) -> bool {
        let was_spilled = !self.spilled.is_empty() && self.spilled.remove(&key).is_some();
        let queued = key.clone();
        let had = match self.entries.insert(key, Slot::Hot(Box::new(value))) {
            Some(Slot::Hot(_)) => return true,
            Some(Slot::Frozen(_)) => true,
            None => was_spilled,
        };
        self.queue.push_back(queued);
        self.freeze_excess();
        had
    }

    /// Every entry, in no particular order; frozen ones decoded one by one.
    ///
    /// Panics when an entry is spilled: use [`TieredMap::try_iter`] on a map that spills.
    pub fn iter(&self) -> impl Iterator<Item = (&K, Cow<'_, V>)> {
        assert!(self.spilled.is_empty(), "a map with spilled entries is iterated without reading them back");
        self.in_memory()
    }

    /// The hot and frozen entries.
    fn in_memory(&self) -> impl Iterator<Item = (&K, Cow<'_, V>)> {
        self.entries.iter().map(|(key, slot)| (key, slot.value()))
    }

    /// Every value, as [`TieredMap::iter`] gives them.
    pub fn values(&self) -> impl Iterator<Item = Cow<'_, V>> {
        self.iter().map(|(_, value)| value)
    }

    /// Every entry as [`TieredMap::iter`] gives them, then the spilled ones read back one at a
    /// time; a failed read is an item of its own, with its key, and iteration goes on after it.
    #[allow(clippy::type_complexity)]
    pub fn try_iter(&self) -> impl Iterator<Item = Result<(&K, Cow<'_, V>), (&K, io::Error)>> {
        let spilled = self.spilled.iter().map(|(key, spot)| match self.read_spilled(*spot) {
            Ok(value) => Ok((key, Cow::Owned(value))),
            Err(error) => Err((key, error)),
        });
        self.in_memory().map(Ok).chain(spilled)
    }

    /// The entry of `key`, as [`TieredMap::get`] gives it, or read back from the spill.
    pub fn fetch(&self, key: &K) -> io::Result<Option<Cow<'_, V>>> {
        if let Some(slot) = self.entries.get(key) {
            return Ok(Some(slot.value()));
        }
        match self.spilled.get(key) {
            Some(spot) => Ok(Some(Cow::Owned(self.read_spilled(*spot)?))),
            None => Ok(None),
        }
    }

    /// Lets [`TieredMap::spill_frozen`] move frozen entries to `spill` from now on.
    pub fn attach(&mut self, spill: Arc<Spill>) {
        assert!(self.spilled.is_empty(), "a map's spilled entries stay in the spill they were written to");
        self.spill = Some(spill);
        self.unspilled =
            self.entries.iter().filter(|(_, slot)| slot.frozen().is_some()).map(|(key, _)| key.clone()).collect();
    }

    /// Moves every frozen entry held in memory to the spill, with one write; returns how
    /// many entries are spilled in all. Without a spill attached, nothing moves. On failure
    /// nothing moves either.
    pub fn spill_frozen(&mut self) -> io::Result<usize> {
        let Some(spill) = &self.spill else { return Ok(0) };
        let mut seen = IdSet::default();
        let keys: Vec<K> = self
            .unspilled
            .iter()
            .filter(|key| {
                let slot = self.entries.get(key);
                slot.and_then(Slot::frozen).is_some_and(|bytes| bytes.len() <= crate::memory::spill::RECORD_BYTES_MAX)
            })
            .filter(|key| seen.insert(*key))
            .cloned()
            .collect();
        drop(seen);
        let records = keys.iter().filter_map(|key| self.entries.get(key).and_then(Slot::frozen));
        let spots = spill.append(records)?;
        assert_eq!(spots.len(), keys.len(), "a spot per record");
        for (key, spot) in keys.into_iter().zip(spots) {
            let slot = self.entries.remove(&key);
            debug_assert_eq!(slot.as_ref().and_then(Slot::frozen).map(<[u8]>::len), Some(spot.len()));
            assert!(self.spilled.insert(key, spot).is_none(), "an entry is in one tier");
        }
        // Recovery freezes every order before the spill is attached: give that table back,
        // and the list of them. (An entry too large for a record stays in memory for good.)
        crate::domain::idmap::shrink_if_sparse(&mut self.entries);
        self.unspilled.clear();
        self.unspilled.shrink_to(crate::domain::idmap::SHRINK_CAPACITY_MIN);
        Ok(self.spilled.len())
    }

    /// The spilled entries, for an owner that writes them out of an [`image`]: where they
    /// are, and the spill to read them from. The spill only grows, so the spots stay valid
    /// however the map changes afterwards.
    pub fn spilled(&self) -> SpilledEntries<K> {
        let spots = self.spilled.iter().map(|(key, spot)| (key.clone(), *spot)).collect();
        SpilledEntries { spill: self.spill.clone(), spots }
    }

    /// Adds encoded entries, frozen, as [`TieredMap::spilled`] took them out: for a map read
    /// from an [`image`]. Refuses (and adds nothing) if a key is already in the map.
    pub fn restore_frozen(&mut self, entries: Vec<(K, Box<[u8]>)>) -> Result<(), &'static str> {
        // Borrowed keys: a snapshot restores millions, and cloning each would double them.
        let mut seen = IdSet::default();
        seen.reserve(entries.len());
        for (key, _) in &entries {
            if self.contains_key(key) || !seen.insert(key) {
                return Err("a restored key is already in the map");
            }
        }
        drop(seen);
        if self.spill.is_some() {
            self.unspilled.extend(entries.iter().map(|(key, _)| key.clone()));
        }
        self.entries.reserve(entries.len());
        self.entries.extend(entries.into_iter().map(|(key, bytes)| (key, Slot::Frozen(bytes))));
        Ok(())
    }

    /// Brings a spilled entry of `key` back into memory, frozen, so that [`TieredMap::get`]
    /// and [`TieredMap::get_mut`] may reach it. Anything else is left as it is.
    pub fn load(&mut self, key: &K) -> io::Result<()> {
        let Some(spot) = self.spilled.get(key).copied() else { return Ok(()) };
        let bytes = read_spot(self.spill.as_deref(), spot)?;
        self.spilled.remove(key);
        self.entries.insert(key.clone(), Slot::Frozen(bytes.into_boxed_slice()));
        // Spilled again with the next spill; the spill only grows, so it is written anew.
        self.unspilled.push(key.clone());
        Ok(())
    }

    fn read_spilled(&self, spot: Spot) -> io::Result<V> {
        read_decoded(self.spill.as_deref(), spot)
    }

    /// Freezes the oldest hot entries until at most `hot_max` are hot.
    fn freeze_excess(&mut self) {
        // Each hot key is in the queue once, so a round over it ends the loop.
        let mut turns = self.queue.len();
        while self.queue.len() > self.hot_max && turns > 0 {
            turns -= 1;
            let Some(key) = self.queue.pop_front() else { break };
            let Some(slot) = self.entries.get_mut(&key) else { unreachable!("every queued key has an entry") };
            let Slot::Hot(value) = slot else { unreachable!("every queued key is hot") };
            let bytes = crate::memory::pack::pack(&**value, &mut self.scratch);
            debug_assert!(V::thaw(&bytes).is_ok(), "a frozen entry unpacks");
            *slot = Slot::Frozen(bytes);
            if self.spill.is_some() {
                self.unspilled.push(key);
            }
        }
    }
}

/// A map's spilled entries, taken out by [`TieredMap::spilled`]. It serializes as a
/// sequence of keys and encoded entries, each read back from the spill as it is written; a
/// failed read fails the serialization. That is the shape [`TieredMap::restore_frozen`]
/// takes, decoded as `Vec<(K, Vec<u8>)>`.
pub struct SpilledEntries<K> {
    spill: Option<Arc<Spill>>,
    spots: Vec<(K, Spot)>,
}

impl<K> SpilledEntries<K> {
    /// How many.
    pub fn len(&self) -> usize {
        self.spots.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.spots.is_empty()
    }

    /// The encoded entries' bytes in all, keys and framing aside.
    pub fn entry_bytes(&self) -> usize {
        self.spots.iter().map(|(_, spot)| spot.len()).sum()
    }
}

impl<K: Serialize> Serialize for SpilledEntries<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.spots.len()))?;
        for (key, spot) in &self.spots {
            let bytes = read_spot(self.spill.as_deref(), *spot).map_err(serde::ser::Error::custom)?;
            seq.serialize_element(&(key, Raw(&bytes)))?;
        }
        seq.end()
    }
}

/// Encoded bytes, written as bytes rather than as a sequence of numbers (postcard writes
/// them as it writes a `Vec<u8>`).
struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// The bytes of a spilled record; an error when there is no spill to read it from.
fn read_spot(spill: Option<&Spill>, spot: Spot) -> io::Result<Vec<u8>> {
    match spill {
        Some(spill) => spill.read(spot),
        None => Err(io::Error::other("a spilled record without a spill")),
    }
}

/// A spilled record decoded; bytes that do not decode are `InvalidData`, not a panic, since
/// they came back through IO. (Bytes that decode but whose appended changes do not fit the
/// value, [`Entry::thaw`], are a broken invariant like any change that does not fit: the
/// spill is this process's own file, and a record is read back as it was written.)
fn read_decoded<T: Entry>(spill: Option<&Spill>, spot: Spot) -> io::Result<T> {
    let bytes = read_spot(spill, spot)?;
    T::thaw(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl<V: Entry> Slot<V> {
    /// The value: borrowed when hot, a decoded copy when frozen.
    fn value(&self) -> Cow<'_, V> {
        match self {
            Slot::Hot(value) => Cow::Borrowed(value),
            Slot::Frozen(bytes) => Cow::Owned(thaw(bytes)),
        }
    }
}

impl<V> Slot<V> {
    /// The encoded bytes of a frozen entry.
    fn frozen(&self) -> Option<&[u8]> {
        match self {
            Slot::Hot(_) => None,
            Slot::Frozen(bytes) => Some(bytes),
        }
    }
}

/// Decodes a frozen entry or a sealed block. The bytes were encoded from a value of the
/// same type in this process, so failing to decode them is a broken invariant.
fn thaw<V: Entry>(bytes: &[u8]) -> V {
    match V::thaw(bytes) {
        Ok(value) => value,
        Err(error) => panic!("a frozen entry does not decode: {error}"),
    }
}

impl<K: Clone, V: Clone> Clone for TieredMap<K, V> {
    fn clone(&self) -> Self {
        TieredMap {
            entries: self.entries.clone(),
            spilled: self.spilled.clone(),
            queue: self.queue.clone(),
            hot_max: self.hot_max,
            spill: self.spill.clone(),
            unspilled: self.unspilled.clone(),
            scratch: Vec::new(),
        }
    }
}

impl<K, V> PartialEq for TieredMap<K, V>
where
    K: Hash + Eq + Clone,
    V: Entry + PartialEq,
{
    /// Equal when both hold the same entries, whichever tiers hold them. An entry that
    /// cannot be read back from its spill is not shown equal to anything.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.try_iter().all(|entry| {
                entry.is_ok_and(|(key, value)| other.fetch(key).is_ok_and(|theirs| theirs.is_some_and(|t| t == value)))
            })
    }
}

impl<K, V> Eq for TieredMap<K, V>
where
    K: Hash + Eq + Clone,
    V: Entry + Eq,
{
}

impl<K, V> fmt::Debug for TieredMap<K, V>
where
    K: Hash + Eq + Clone + fmt::Debug,
    V: Entry + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for entry in self.try_iter() {
            match entry {
                Ok((key, value)) => map.entry(key, &value),
                Err((key, error)) => map.entry(key, &format_args!("unreadable: {error}")),
            };
        }
        map.finish()
    }
}

impl<K, V> Serialize for TieredMap<K, V>
where
    K: Hash + Eq + Clone + Ord + Serialize,
    V: Entry + Serialize,
{
    /// A map in key order, frozen entries decoded one at a time; spilled ones are read back
    /// and a failed read fails the serialization.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut keys: Vec<&K> = self.entries.keys().chain(self.spilled.keys()).collect();
        keys.sort_unstable();
        let mut map = serializer.serialize_map(Some(keys.len()))?;
        for key in keys {
            match self.fetch(key).map_err(serde::ser::Error::custom)? {
                Some(value) => map.serialize_entry(key, &value)?,
                None => unreachable!("every key listed has an entry"),
            }
        }
        map.end()
    }
}

impl<'de, K, V> Deserialize<'de> for TieredMap<K, V>
where
    K: Hash + Eq + Clone + Deserialize<'de>,
    V: Entry + DeserializeOwned,
{
    /// From a map, tiered as inserted in its order with the default bound.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<K, V>(PhantomData<(K, V)>);

        impl<'de, K, V> Visitor<'de> for Entries<K, V>
        where
            K: Hash + Eq + Clone + Deserialize<'de>,
            V: Entry + DeserializeOwned,
        {
            type Value = TieredMap<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = TieredMap::default();
                while let Some((key, value)) = access.next_entry::<K, V>()? {
                    if map.insert(key, value) {
                        return Err(serde::de::Error::custom("a key appears twice"));
                    }
                }
                Ok(map)
            }
        }

        deserializer.deserialize_map(Entries(PhantomData))
    }
}

/// A [`TieredMap`] as it is held, for an engine snapshot that only this build reads back:
/// the hot entries in the order they became hot, then the frozen ones as their encoded
/// bytes. Nothing is sorted, decoded or encoded again, so writing it costs about a copy of
/// the bytes, and reading it back leaves frozen entries frozen. The order of the frozen
/// entries follows the map's random hash seed: the bytes are not canonical, and never hashed.
///
/// Spilled entries are not in the image, so that writing it never waits for the spill: the
/// owner takes them apart ([`TieredMap::spilled`]), writes them where it likes (reading them
/// back off its hot path), and gives them back to the map read from the image
/// ([`TieredMap::restore_frozen`]).
///
/// Use with `#[serde(with = "crate::memory::tiered::image")]`.
pub mod image {
    use super::*;
    use serde::ser::SerializeTuple;

    struct Hot<'a, K, V>(&'a TieredMap<K, V>);

    impl<K: Hash + Eq + Serialize, V: Serialize> Serialize for Hot<'_, K, V> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut seq = serializer.serialize_seq(Some(self.0.queue.len()))?;
            for key in &self.0.queue {
                match self.0.entries.get(key) {
                    Some(Slot::Hot(value)) => seq.serialize_element(&(key, value))?,
                    _ => unreachable!("every queued key is hot"),
                }
            }
            seq.end()
        }
    }

    struct Frozen<'a, K, V>(&'a TieredMap<K, V>);

    impl<K: Serialize, V> Serialize for Frozen<'_, K, V> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let map = self.0;
            let mut seq = serializer.serialize_seq(Some(map.entries.len() - map.queue.len()))?;
            for (key, slot) in &map.entries {
                if let Some(bytes) = slot.frozen() {
                    seq.serialize_element(&(key, Raw(bytes)))?;
                }
            }
            seq.end()
        }
    }

    struct RawBuf(Box<[u8]>);

    impl<'de> Deserialize<'de> for RawBuf {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Bytes;

            impl Visitor<'_> for Bytes {
                type Value = RawBuf;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("encoded bytes")
                }

                fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<RawBuf, E> {
                    Ok(RawBuf(bytes.into()))
                }
            }

            deserializer.deserialize_bytes(Bytes)
        }
    }

    /// The frozen entries of an image, in the table the map is then built around.
    struct FrozenMap<K, V>(IdMap<K, Slot<V>>);

    impl<'de, K: Hash + Eq + Deserialize<'de>, V> Deserialize<'de> for FrozenMap<K, V> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Entries<K, V>(PhantomData<(K, V)>);

            impl<'de, K: Hash + Eq + Deserialize<'de>, V> Visitor<'de> for Entries<K, V> {
                type Value = FrozenMap<K, V>;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a sequence of keys and encoded entries")
                }

                fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                    let mut map = IdMap::default();
                    map.reserve(access.size_hint().unwrap_or(0));
                    while let Some((key, RawBuf(bytes))) = access.next_element::<(K, RawBuf)>()? {
                        if map.insert(key, Slot::Frozen(bytes)).is_some() {
                            return Err(serde::de::Error::custom("a key appears twice"));
                        }
                    }
                    Ok(FrozenMap(map))
                }
            }

            deserializer.deserialize_seq(Entries(PhantomData))
        }
    }

    /// Writes `map` as it is held.
    pub fn serialize<K, V, S>(map: &TieredMap<K, V>, serializer: S) -> Result<S::Ok, S::Error>
    where
        K: Hash + Eq + Serialize,
        V: Serialize,
        S: Serializer,
    {
        let mut tuple = serializer.serialize_tuple(2)?;
        tuple.serialize_element(&Hot(map))?;
        tuple.serialize_element(&Frozen(map))?;
        tuple.end()
    }

    /// Reads a map written by [`serialize`], with the default bound; the owner sets its own.
    pub fn deserialize<'de, K, V, D>(deserializer: D) -> Result<TieredMap<K, V>, D::Error>
    where
        K: Hash + Eq + Clone + Deserialize<'de>,
        V: Entry + DeserializeOwned,
        D: Deserializer<'de>,
    {
        let (hot, FrozenMap(entries)): (Vec<(K, V)>, FrozenMap<K, V>) = Deserialize::deserialize(deserializer)?;
        let mut map = TieredMap { entries, ..TieredMap::default() };
        for (key, value) in hot {
            if map.insert(key, value) {
                return Err(serde::de::Error::custom("a key appears twice"));
            }
        }
        Ok(map)
    }
}

/// An item of a [`BlockLog`]: its key, which never decreases along the log.
pub trait Keyed {
    /// The key; a log's items are in key order.
    fn key(&self) -> u64;
}

/// Items kept per encoded block of a [`BlockLog`].
pub const BLOCK_ITEMS: usize = 1024;

/// An append-only sequence whose full blocks of [`BLOCK_ITEMS`] are kept postcard-encoded,
/// for journals that grow with every order and are read a page at a time.
///
/// Guarantees: it is one sequence; iteration, equality, `Debug` and serialization see the
/// items in order whichever are encoded, and serialize exactly as a `Vec` does. Only the
/// last, open block is kept as values. Reading a page decodes the blocks it spans.
///
/// With a [`Spill`] attached, the owner's shell moves sealed blocks out of memory
/// ([`BlockLog::spill_sealed`]); only where each one is stays. Every read that may meet a
/// spilled block ([`BlockLog::try_iter`], [`BlockLog::after`], equality, serialization) is
/// fallible or says how it fails; [`BlockLog::push`] never reads a block.
pub struct BlockLog<T> {
    sealed: Vec<Block>,
    open: Vec<T>,
    spill: Option<Arc<Spill>>,
}

/// Encoded items, with the last one's key and how many there are.
#[derive(Clone)]
struct Block {
    key_last: u64,
    items: usize,
    bytes: Sealed,
}

/// Where a sealed block's bytes are.
#[derive(Clone)]
enum Sealed {
    Held(Box<[u8]>),
    Spilled(Spot),
}

impl<T> Default for BlockLog<T> {
    fn default() -> Self {
        BlockLog { sealed: Vec::new(), open: Vec::new(), spill: None }
    }
}

impl<T: Clone> Clone for BlockLog<T> {
    fn clone(&self) -> Self {
        BlockLog { sealed: self.sealed.clone(), open: self.open.clone(), spill: self.spill.clone() }
    }
}

impl<T> BlockLog<T>
where
    T: Keyed + Clone + Pack + Serialize + DeserializeOwned,
{
    /// Items in all.
    pub fn len(&self) -> usize {
        self.sealed.iter().map(|block| block.items).sum::<usize>() + self.open.len()
    }

    /// Whether it holds no item.
    pub fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.open.is_empty()
    }

    /// Items kept encoded.
    pub fn sealed_len(&self) -> usize {
        self.sealed.iter().map(|block| block.items).sum()
    }

    /// The key of the last item.
    fn key_last(&self) -> Option<u64> {
        self.open.last().map(Keyed::key).or_else(|| self.sealed.last().map(|block| block.key_last))
    }

    /// Appends `item`, whose key must not be below the last one's; seals the open block
    /// with [`crate::memory::pack`] when it is full.
    pub fn push(&mut self, item: T) {
        if let Some(last) = self.key_last() {
            assert!(item.key() >= last, "a block log is appended in key order: {} after {last}", item.key());
        }
        self.open.push(item);
        if self.open.len() < BLOCK_ITEMS {
            return;
        }
        let open = std::mem::take(&mut self.open);
        let key_last = open.last().map(Keyed::key).unwrap_or_else(|| unreachable!("a full block has items"));
        let bytes = crate::memory::pack::pack(&open, &mut Vec::new());
        debug_assert!(crate::memory::pack::unpack::<Vec<T>>(&bytes).is_ok(), "a sealed block unpacks");
        self.sealed.push(Block { key_last, items: open.len(), bytes: Sealed::Held(bytes) });
    }

    /// Every item in order, sealed blocks decoded one at a time.
    ///
    /// Panics when a block is spilled: use [`BlockLog::try_iter`] on a log that spills.
    pub fn iter(&self) -> impl Iterator<Item = Cow<'_, T>> {
        assert!(self.spilled_blocks() == 0, "a log with spilled blocks is iterated without reading them back");
        self.try_iter().map(|item| match item {
            Ok(item) => item,
            Err(error) => unreachable!("a block in memory reads: {error}"),
        })
    }

    /// Every item in order, sealed blocks decoded (and read back from the spill) one at a
    /// time. A block that cannot be read is one failed item, and iteration goes on after it.
    pub fn try_iter(&self) -> impl Iterator<Item = io::Result<Cow<'_, T>>> {
        let sealed = self.sealed.iter().flat_map(|block| {
            let items: Vec<io::Result<Cow<'_, T>>> = match self.unseal(block) {
                Ok(items) => items.into_iter().map(|item| Ok(Cow::Owned(item))).collect(),
                Err(error) => vec![Err(error)],
            };
            items
        });
        sealed.chain(self.open.iter().map(|item| Ok(Cow::Borrowed(item))))
    }

    /// The items whose key is above `after`, at most `limit`, in order.
    pub fn after(&self, after: u64, limit: usize) -> io::Result<Vec<T>> {
        let mut page = Vec::new();
        let first = self.sealed.partition_point(|block| block.key_last <= after);
        for block in &self.sealed[first..] {
            if page.len() >= limit {
                return Ok(page);
            }
            let items = self.unseal(block)?;
            page.extend(items.into_iter().filter(|item| item.key() > after).take(limit - page.len()));
        }
        let start = self.open.partition_point(|item| item.key() <= after);
        page.extend(self.open[start..].iter().take(limit.saturating_sub(page.len())).cloned());
        Ok(page)
    }

    /// Sealed blocks out of memory, in the spill.
    pub fn spilled_blocks(&self) -> usize {
        self.sealed.iter().filter(|block| matches!(block.bytes, Sealed::Spilled(_))).count()
    }

    /// Lets [`BlockLog::spill_sealed`] move sealed blocks to `spill` from now on.
    pub fn attach(&mut self, spill: Arc<Spill>) {
        assert!(self.spilled_blocks() == 0, "a log's spilled blocks stay in the spill they were written to");
        self.spill = Some(spill);
    }

    /// Moves every sealed block still in memory to the spill, with one write; returns how
    /// many blocks are spilled. Without a spill attached, nothing moves; on failure neither.
    pub fn spill_sealed(&mut self) -> io::Result<usize> {
        let Some(spill) = &self.spill else { return Ok(0) };
        // Blocks are spilled oldest first, so the ones still held are the last ones.
        let first_held = self.sealed.partition_point(|block| matches!(block.bytes, Sealed::Spilled(_)));
        let held = &self.sealed[first_held..];
        debug_assert!(held.iter().all(|block| matches!(block.bytes, Sealed::Held(_))), "spilled blocks come first");
        let records = held.iter().filter_map(|block| match &block.bytes {
            Sealed::Held(bytes) => Some(&bytes[..]),
            Sealed::Spilled(_) => None,
        });
        let spots = spill.append(records)?;
        assert_eq!(spots.len(), held.len(), "a spot per held block");
        for (block, spot) in self.sealed[first_held..].iter_mut().zip(spots) {
            block.bytes = Sealed::Spilled(spot);
        }
        Ok(self.sealed.len())
    }

    /// Decodes a sealed block, read back from the spill if it is there.
    fn unseal(&self, block: &Block) -> io::Result<Vec<T>> {
        let items: Vec<T> = match &block.bytes {
            Sealed::Held(bytes) => thaw(bytes),
            Sealed::Spilled(spot) => read_decoded(self.spill.as_deref(), *spot)?,
        };
        assert_eq!(items.len(), block.items, "a sealed block holds what it was sealed with");
        Ok(items)
    }
}

impl<T> PartialEq for BlockLog<T>
where
    T: Keyed + Clone + PartialEq + Pack + Serialize + DeserializeOwned,
{
    /// Equal when both hold the same items in the same order, whichever are encoded. An
    /// item that cannot be read back from the spill is not shown equal to anything.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.try_iter().zip(other.try_iter()).all(|(ours, theirs)| match (ours, theirs) {
                (Ok(ours), Ok(theirs)) => ours == theirs,
                _ => false,
            })
    }
}

impl<T> Eq for BlockLog<T> where T: Keyed + Clone + Eq + Pack + Serialize + DeserializeOwned {}

impl<T> fmt::Debug for BlockLog<T>
where
    T: Keyed + Clone + fmt::Debug + Pack + Serialize + DeserializeOwned,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for item in self.try_iter() {
            match item {
                Ok(item) => list.entry(&item),
                Err(error) => list.entry(&error),
            };
        }
        list.finish()
    }
}

impl<T> Serialize for BlockLog<T>
where
    T: Keyed + Clone + Pack + Serialize + DeserializeOwned,
{
    /// A sequence, as a `Vec` of the items would be; a spilled block that cannot be read
    /// back fails it.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for item in self.try_iter() {
            seq.serialize_element(&item.map_err(serde::ser::Error::custom)?)?;
        }
        seq.end()
    }
}

impl<'de, T> Deserialize<'de> for BlockLog<T>
where
    T: Keyed + Clone + Pack + Serialize + DeserializeOwned,
{
    /// From a sequence in key order, sealed as it is read.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Items<T>(PhantomData<T>);

        impl<'de, T> Visitor<'de> for Items<T>
        where
            T: Keyed + Clone + Pack + Serialize + DeserializeOwned,
        {
            type Value = BlockLog<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence in key order")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut log = BlockLog::default();
                while let Some(item) = access.next_element::<T>()? {
                    if log.key_last().is_some_and(|last| item.key() < last) {
                        return Err(serde::de::Error::custom("items out of key order"));
                    }
                    log.push(item);
                }
                Ok(log)
            }
        }

        deserializer.deserialize_seq(Items(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A change to the map, and what is then expected of it.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Insert(u32, u64),
        /// Changed through `get_mut`: made hot.
        Change(u32, u64),
        /// Changed through `update`: left in its tier.
        Update(u32, u64),
    }

    /// Runs `steps` on a map with `hot_max` beside a `BTreeMap`, and after every step checks
    /// that the two hold the same entries, that the hot tier keeps its bound, and that the
    /// map serializes as the ordered one does. Returns the entries frozen at the end.
    fn check(hot_max: usize, steps: &[Step], frozen_expected: usize) {
        let mut map: TieredMap<String, Vec<u64>> = TieredMap::with_hot_max(hot_max);
        let mut model: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for step in steps {
            match *step {
                Step::Insert(key, value) => {
                    let had = map.insert(key.to_string(), vec![value]);
                    assert_eq!(had, model.insert(key.to_string(), vec![value]).is_some(), "{step:?}");
                }
                Step::Change(key, value) => {
                    let theirs = model.get_mut(&key.to_string()).map(|v| {
                        v.push(value);
                        v.clone()
                    });
                    let ours = map.get_mut(&key.to_string()).map(|v| {
                        v.push(value);
                        v.clone()
                    });
                    assert_eq!(ours, theirs, "{step:?}");
                }
                Step::Update(key, value) => {
                    let theirs = model.get_mut(&key.to_string()).map(|v| {
                        v.push(value);
                        v.clone()
                    });
                    let frozen = map.frozen_len();
                    let ours = map.update(&key.to_string(), |v| {
                        v.push(value);
                        v.clone()
                    });
                    assert_eq!(ours, theirs, "{step:?}");
                    assert_eq!(map.frozen_len(), frozen, "{step:?}: an update moves nothing between tiers");
                }
            }
            assert!(map.len() - map.frozen_len() <= hot_max.max(1), "{step:?}: too many hot");
            assert_eq!(map.len(), model.len());
            for (key, value) in &model {
                assert_eq!(map.get(key).as_deref(), Some(value), "{step:?}: {key}");
            }
            let iterated: BTreeMap<String, Vec<u64>> = map.iter().map(|(k, v)| (k.clone(), v.into_owned())).collect();
            assert_eq!(iterated, model);
        }
        assert_eq!(map.frozen_len(), frozen_expected);
        let bytes = postcard::to_allocvec(&map).expect("encodes");
        assert_eq!(bytes, postcard::to_allocvec(&model).expect("encodes"), "serialized as an ordered map");
        let back: TieredMap<String, Vec<u64>> = postcard::from_bytes(&bytes).expect("decodes");
        assert!(back == map, "a round trip keeps every entry");
        // As held: the same entries in the same tiers, hot ones in the order they became hot.
        #[derive(Serialize, Deserialize)]
        struct Held(#[serde(with = "image")] TieredMap<String, Vec<u64>>);
        let held = postcard::to_allocvec(&Held(map.clone())).expect("encodes");
        let Held(mut back) = postcard::from_bytes(&held).expect("decodes");
        assert!(back == map, "an image keeps every entry");
        assert_eq!((back.frozen_len(), back.queue.clone()), (map.frozen_len(), map.queue.clone()));
        assert_eq!(frozen_bytes(&back), frozen_bytes(&map), "frozen entries are neither decoded nor encoded again");
        back.set_hot_max(hot_max);
        assert_eq!(back.frozen_len(), map.frozen_len(), "its bound set again, nothing more freezes");
        let mut all_hot = TieredMap::with_hot_max(usize::MAX);
        for (key, value) in &model {
            all_hot.insert(key.clone(), value.clone());
        }
        assert!(all_hot == map, "equal whichever tier holds an entry");
        assert!(map == all_hot, "and the other way round");
        all_hot.insert("other".to_owned(), vec![0]);
        assert!(all_hot != map, "an entry more is a difference");
        check_spilled(&map, &model, &bytes, frozen_expected);
    }

    /// The frozen entries held in memory, as their bytes.
    fn frozen_bytes<V>(map: &TieredMap<String, V>) -> BTreeMap<&String, &[u8]> {
        map.entries.iter().filter_map(|(key, slot)| Some((key, slot.frozen()?))).collect()
    }

    /// `map` with its frozen entries spilled is still the same map for every reader that
    /// may read the spill, and each entry loaded back is reachable by the core's reads.
    fn check_spilled(
        map: &TieredMap<String, Vec<u64>>,
        model: &BTreeMap<String, Vec<u64>>,
        bytes: &[u8],
        frozen: usize,
    ) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut spilled = map.clone();
        spilled.attach(Arc::new(Spill::create_in(dir.path()).expect("spill")));
        assert_eq!(spilled.spill_frozen().expect("spilled"), frozen);
        assert_eq!((spilled.spilled_len(), spilled.frozen_len(), spilled.len()), (frozen, frozen, model.len()));
        assert!(frozen_bytes(&spilled).is_empty(), "nothing frozen is left in memory");
        let read: BTreeMap<String, Vec<u64>> = spilled
            .try_iter()
            .map(|entry| entry.expect("read back"))
            .map(|(k, v)| (k.clone(), v.into_owned()))
            .collect();
        assert_eq!(&read, model);
        for (key, value) in model {
            assert_eq!(spilled.fetch(key).expect("read back").as_deref(), Some(value), "{key}");
            assert!(spilled.contains_key(key));
        }
        assert_eq!(postcard::to_allocvec(&spilled).expect("encodes"), bytes, "serialized as before");
        assert!(spilled == *map, "equal whichever tier holds an entry");
        assert!(map.eq(&spilled), "and the other way round");
        #[derive(Serialize, Deserialize)]
        struct Held(#[serde(with = "image")] TieredMap<String, Vec<u64>>);
        let image = postcard::to_allocvec(&(Held(spilled.clone()), spilled.spilled())).expect("encodes");
        let (Held(mut back), apart): (Held, Vec<(String, Vec<u8>)>) = postcard::from_bytes(&image).expect("decodes");
        assert_eq!((back.len(), apart.len()), (model.len() - frozen, frozen), "spilled entries are written apart");
        let apart: Vec<(String, Box<[u8]>)> = apart.into_iter().map(|(key, bytes)| (key, bytes.into())).collect();
        if let Some((key, bytes)) = apart.first().cloned() {
            let mut twice = apart.clone();
            twice.push((key, bytes));
            assert!(back.clone().restore_frozen(twice).is_err(), "a key restored twice is refused");
        }
        back.restore_frozen(apart).expect("restored");
        assert!(back == *map, "the image and the entries written apart are the map");
        assert_eq!((back.frozen_len(), back.spilled_len()), (frozen, 0));
        for key in model.keys() {
            spilled.load(key).expect("loaded");
        }
        assert_eq!((spilled.spilled_len(), spilled.frozen_len()), (0, frozen), "loaded entries are frozen in memory");
        for (key, value) in model {
            assert_eq!(spilled.get(key).as_deref(), Some(value), "{key}");
        }
    }

    #[test]
    #[should_panic(expected = "a spilled entry is read without being loaded first")]
    fn the_core_never_reads_a_spilled_entry() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut map: TieredMap<u32, u64> = TieredMap::with_hot_max(1);
        map.attach(Arc::new(Spill::create_in(dir.path()).expect("spill")));
        map.insert(1, 10);
        map.insert(2, 20);
        assert_eq!(map.spill_frozen().expect("spilled"), 1);
        assert_eq!(map.get(&2).as_deref(), Some(&20), "hot entries are read as ever");
        map.get(&1);
    }

    #[test]
    fn one_map_whatever_the_tiers() {
        use Step::{Change, Insert, Update};
        check(8, &[Insert(1, 10), Insert(2, 20), Change(1, 11)], 0);
        // Three hot at most: the first two freeze, changing one thaws it and freezes the
        // oldest hot one.
        check(3, &[Insert(1, 1), Insert(2, 2), Insert(3, 3), Insert(4, 4), Insert(5, 5)], 2);
        check(3, &[Insert(1, 1), Insert(2, 2), Insert(3, 3), Insert(4, 4), Change(1, 9), Change(2, 8)], 1);
        // Replacing a frozen entry makes it hot and replaces it.
        check(1, &[Insert(1, 1), Insert(2, 2), Insert(1, 7), Change(2, 3), Change(9, 9)], 1);
        let many: Vec<Step> =
            (0..200).map(|n| if n % 3 == 2 { Change(n / 2, 5) } else { Insert(n, n.into()) }).collect();
        check(16, &many, 134 - 16);
        check(0, &[Insert(1, 1), Insert(2, 2)], 1);
        // An update changes a frozen entry where it is, a hot one as it is, and none that
        // is missing.
        check(2, &[Insert(1, 1), Insert(2, 2), Insert(3, 3), Update(1, 9), Update(3, 8), Update(9, 9)], 1);
        check(1, &[Insert(1, 1), Insert(2, 2), Update(1, 5), Update(1, 6), Change(1, 7), Update(2, 4)], 1);
        let updates: Vec<Step> =
            (0..200).map(|n| if n % 3 == 2 { Update(n / 2, 5) } else { Insert(n, n.into()) }).collect();
        check(16, &updates, 134 - 16);
    }

    /// A frozen entry is offered to `append` first, and what it writes replaces the entry;
    /// when it declines, the entry is decoded and changed as by `update`. A hot entry is
    /// changed as it is, and a missing one by neither.
    #[test]
    fn a_frozen_entry_takes_an_appended_change_or_is_changed_decoded() {
        let mut map: TieredMap<u32, Vec<u64>> = TieredMap::with_hot_max(1);
        map.insert(1, vec![1]);
        map.insert(2, vec![2]);
        let appended = map.update_or_append(
            &1,
            |_| unreachable!("a frozen entry is offered to append"),
            |bytes, scratch| {
                assert_eq!(crate::memory::pack::unpack::<Vec<u64>>(bytes), Ok(vec![1]));
                assert!(scratch.is_empty(), "the scratch buffer is handed over empty");
                bytes.clear();
                vec![1u64, 10].pack(bytes);
                Some("appended")
            },
        );
        assert_eq!(appended, Some("appended"));
        assert_eq!(map.get(&1).as_deref(), Some(&vec![1, 10]));
        assert!(map.frozen_bytes(&1).is_some(), "it stays frozen");
        let changed = map.update_or_append(
            &1,
            |value| {
                value.push(11);
                "changed"
            },
            |_, _| None,
        );
        assert_eq!(changed, Some("changed"));
        assert_eq!(map.get(&1).as_deref(), Some(&vec![1, 10, 11]));
        assert!(map.frozen_bytes(&1).is_some(), "declined, it still stays frozen");
        let hot = map.update_or_append(
            &2,
            |value| {
                value.push(20);
                "hot"
            },
            |_, _| unreachable!("a hot entry is changed as it is"),
        );
        assert_eq!(hot, Some("hot"));
        assert_eq!(map.get(&2).as_deref(), Some(&vec![2, 20]));
        assert_eq!(map.update_or_append(&9, |_| (), |_, _| Some(())), None, "no entry");
    }

    #[test]
    fn an_image_with_a_key_twice_is_refused() {
        #[derive(Serialize, Deserialize)]
        struct Held(#[serde(with = "image")] TieredMap<u32, u64>);
        let mut map = TieredMap::with_hot_max(1);
        map.insert(1, 10);
        map.insert(2, 20);
        let bytes = postcard::to_allocvec(&Held(map)).expect("encodes");
        // The image is (hot: [(2, 20)], frozen: [(1, bytes)]); make the hot key 1 too.
        let mut twice = bytes.clone();
        assert_eq!(&twice[..3], &[1, 2, 20]);
        twice[1] = 1;
        assert!(postcard::from_bytes::<Held>(&twice).is_err());
        assert!(postcard::from_bytes::<Held>(&bytes).is_ok());
    }

    #[test]
    fn a_smaller_bound_freezes_the_oldest_first() {
        let mut map: TieredMap<u32, u64> = TieredMap::with_hot_max(10);
        for key in 0..10 {
            map.insert(key, u64::from(key));
        }
        assert_eq!(map.frozen_len(), 0);
        map.set_hot_max(4);
        assert_eq!(map.frozen_len(), 6);
        assert!((0..6).all(|key| matches!(map.get(&key), Some(Cow::Owned(_)))), "the oldest are frozen");
        assert!((6..10).all(|key| matches!(map.get(&key), Some(Cow::Borrowed(_)))), "the newest stay hot");
    }

    /// Entries frozen after the spill is attached are the ones the next spill moves, however
    /// often they were made hot and frozen again in between; the hot ones stay.
    #[test]
    fn each_spill_moves_what_froze_since_the_last() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut map: TieredMap<u32, u64> = TieredMap::with_hot_max(2);
        map.insert(1, 10);
        map.insert(2, 20);
        map.insert(3, 30);
        map.attach(Arc::new(Spill::create_in(dir.path()).expect("spill")));
        assert_eq!(map.spill_frozen().expect("spilled"), 1, "what froze before the spill was attached");
        for key in 4..8 {
            map.insert(key, u64::from(key) * 10);
        }
        // 2 to 5 froze; 4 is made hot (freezing 6) and frozen again (by 9): listed twice.
        *map.get_mut(&4).expect("there") += 1;
        map.insert(8, 80);
        map.insert(9, 90);
        assert_eq!((map.frozen_len(), map.spilled_len()), (7, 1));
        assert_eq!(map.spill_frozen().expect("spilled"), 7, "every frozen entry moved, each once");
        assert_eq!(map.spill_frozen().expect("spilled"), 7, "nothing froze since");
        assert_eq!(map.len() - map.frozen_len(), 2, "the hot ones stay");
        for (key, value) in [(1, 10), (2, 20), (3, 30), (4, 41), (5, 50), (6, 60), (7, 70), (8, 80), (9, 90)] {
            assert_eq!(map.fetch(&key).expect("read back").as_deref(), Some(&value), "{key}");
        }
        map.load(&4).expect("loaded");
        assert_eq!(map.spill_frozen().expect("spilled"), 7, "a loaded entry is spilled again");
    }

    #[test]
    fn an_entry_takes_a_frozen_entrys_room_in_the_table_however_it_is_held() {
        // The table holds every order in memory; a hot one's value is behind a box.
        let slot = std::mem::size_of::<Slot<crate::domain::state::Order>>();
        assert_eq!(slot, std::mem::size_of::<Box<[u8]>>());
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    struct Item(u64, String);

    impl Pack for Item {
        fn pack(&self, out: &mut Vec<u8>) {
            (self.0, self.1.clone()).pack(out);
        }

        fn unpack(input: &mut crate::memory::pack::Reader<'_>) -> Result<Self, crate::memory::pack::PackError> {
            let (key, text) = Pack::unpack(input)?;
            Ok(Item(key, text))
        }
    }

    impl Keyed for Item {
        fn key(&self) -> u64 {
            self.0
        }
    }

    /// A log of `items` (keys `key_of(n)` for n in 0..items) against a `Vec` of the same:
    /// pages after every `after` in `afters`, iteration and serialization agree.
    fn check_log(items: u64, key_of: fn(u64) -> u64, afters: &[u64], sealed_expected: usize) {
        let mut log: BlockLog<Item> = BlockLog::default();
        let mut model: Vec<Item> = Vec::new();
        for n in 0..items {
            let item = Item(key_of(n), format!("entry {n}"));
            log.push(item.clone());
            model.push(item);
        }
        assert_eq!(log.len(), model.len());
        assert_eq!(log.sealed_len(), sealed_expected);
        assert_eq!(log.iter().map(Cow::into_owned).collect::<Vec<_>>(), model);
        let bytes = postcard::to_allocvec(&log).expect("encodes");
        assert_eq!(bytes, postcard::to_allocvec(&model).expect("encodes"), "serialized as a Vec");
        let back: BlockLog<Item> = postcard::from_bytes(&bytes).expect("decodes");
        assert!(back == log);
        assert_eq!(back.sealed_len(), sealed_expected, "sealed again as it is read");
        // The same log with its sealed blocks spilled, then one more block sealed and spilled.
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut spilled = log.clone();
        spilled.attach(Arc::new(Spill::create_in(dir.path()).expect("spill")));
        let blocks = sealed_expected / BLOCK_ITEMS;
        assert_eq!((spilled.spill_sealed().expect("spilled"), spilled.spilled_blocks()), (blocks, blocks));
        assert!(spilled == log, "one sequence whichever blocks are spilled");
        assert!(log.eq(&spilled), "and the other way round");
        assert_eq!(postcard::to_allocvec(&spilled).expect("encodes"), bytes, "serialized as before");
        for log in [&log, &spilled] {
            let items: Vec<Item> = log.try_iter().map(|item| item.expect("read back").into_owned()).collect();
            assert_eq!(items, model);
            for &after in afters {
                for limit in [0, 1, 7, BLOCK_ITEMS - 1, BLOCK_ITEMS + 1, usize::MAX] {
                    let expected: Vec<Item> = model.iter().filter(|i| i.0 > after).take(limit).cloned().collect();
                    assert_eq!(log.after(after, limit).expect("read back"), expected, "after {after}, limit {limit}");
                }
            }
        }
        let (mut longer, mut longer_spilled) = (log.clone(), spilled.clone());
        for n in 0..BLOCK_ITEMS as u64 {
            longer.push(Item(u64::MAX, n.to_string()));
            longer_spilled.push(Item(u64::MAX, n.to_string()));
        }
        assert!(longer != log);
        assert_eq!(longer_spilled.spill_sealed().expect("spilled"), blocks + 1, "the new block is spilled too");
        assert!(longer_spilled == longer);
    }

    #[test]
    #[should_panic(expected = "a log with spilled blocks is iterated without reading them back")]
    fn a_log_with_spilled_blocks_is_read_only_through_the_fallible_reads() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut log: BlockLog<Item> = BlockLog::default();
        log.attach(Arc::new(Spill::create_in(dir.path()).expect("spill")));
        for n in 0..BLOCK_ITEMS as u64 {
            log.push(Item(n, String::new()));
        }
        assert_eq!(log.spill_sealed().expect("spilled"), 1);
        let _ = log.iter().count();
    }

    #[test]
    fn a_block_log_is_one_sequence_whatever_is_sealed() {
        check_log(0, |n| n, &[0, 5], 0);
        check_log(10, |n| n + 1, &[0, 5, 10, 11], 0);
        let n = BLOCK_ITEMS as u64;
        // Keys repeat (several entries per position) and jump.
        check_log(3 * n + 5, |k| k / 3 * 10, &[0, 10, 2_550, 3_410, 3 * n * 10, u64::MAX - 1], 3 * BLOCK_ITEMS);
        check_log(2 * n, |k| k + 1, &[0, n - 1, n, n + 1, 2 * n], 2 * BLOCK_ITEMS);
    }

    #[test]
    fn a_block_log_refuses_items_out_of_key_order_when_read() {
        let items = vec![Item(2, String::new()), Item(1, String::new())];
        let bytes = postcard::to_allocvec(&items).expect("encodes");
        assert!(postcard::from_bytes::<BlockLog<Item>>(&bytes).is_err());
    }
}
