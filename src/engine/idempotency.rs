//! Idempotency: every command id the engine remembers within its window, with what the
//! command was ([`Known::fingerprint`]) and what happened to it ([`Outcome`]): the positions
//! of its events, nothing, or its refusal. The ids live in a [`Remembered`], forgotten in
//! generations of engine time; refusals for the same shortage share one allocation
//! ([`SharedShortages`]). Engine snapshots hold [`Known`] as it is.
//!
//! Refusals are bounded apart ([`RefusalBounds`]): a refusal appends no event, so a flood of
//! refused commands with distinct ids would otherwise be remembered, in memory and in the
//! store, for the whole window. A shop remembers at most the newest `count_max` refusals,
//! taking at most `bytes_max` bytes; the oldest is forgotten first, and then a retry of it
//! runs as a new command. The store forgets them too ([`forget_in_store`]), in steps of an
//! eighth of the bound, keeping at least what memory keeps, so a restart remembers the same.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::idmap::IdMap;
use crate::domain::ids::CommandId;
use crate::domain::ids::{ShopId, Timestamp};
use crate::domain::rejection::{Rejection, Shortage};
use crate::engine::api::Positions;
use crate::engine::remembered::Remembered;
use crate::log::record::Fingerprint;
use crate::log::store::EventStore;

/// What happened to a remembered command, in 16 bytes: millions are remembered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) enum Outcome {
    /// Accepted, its events at positions `first` to `first + more`.
    Appended { first: u64, more: u32 },
    /// Accepted, and nothing appended.
    Unchanged,
    /// Behind a pointer: most remembered commands were accepted. Shared between the
    /// commands refused for the same shortages ([`SharedShortages`]).
    Rejected(Arc<Rejection>),
}

impl Outcome {
    /// The outcome of a command accepted with its events at `positions`, if any.
    pub(super) fn accepted(positions: Option<Positions>) -> Outcome {
        match positions {
            Some(Positions { first, last }) => Outcome::Appended { first, more: events_after(first, last) },
            None => Outcome::Unchanged,
        }
    }
}

/// How many events a command appended after its first: far fewer than `u32::MAX`, since a
/// batch holds a bounded number of commands of a bounded number of lines.
pub(super) fn events_after(first: u64, last: u64) -> u32 {
    assert!(first <= last, "positions in order");
    u32::try_from(last - first).unwrap_or_else(|_| panic!("one command appended positions {first} to {last}"))
}

/// A remembered command: what it was, to tell a repeat from another command under the same
/// id, and what happened to it. Engine snapshots hold these as they are.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Known {
    /// The command's fingerprint.
    pub(super) fingerprint: Fingerprint,
    /// What happened to it.
    pub(super) outcome: Outcome,
}

const _: () = assert!(std::mem::size_of::<Known>() == 32, "a remembered command's outcome stays small");

/// How many refusals a shop remembers, and in how many bytes: beyond either, the oldest
/// are forgotten ([`crate::engine::EngineConfig::remembered_refusals_max`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RefusalBounds {
    /// Most refusals.
    pub(super) count_max: usize,
    /// Most bytes, as [`refusal_bytes`] counts them.
    pub(super) bytes_max: usize,
}

/// What a remembered refusal is counted as taking: its id, its refusal encoded, and the
/// table slots around them. The store's record of it is smaller, so a store keeping as many
/// bytes of records as memory keeps of refusals keeps at least the same refusals.
pub(super) fn refusal_bytes(command_id: &CommandId, rejection: &Rejection) -> usize {
    /// Counts what postcard writes, writing nothing.
    struct Count(usize);
    impl Extend<u8> for Count {
        fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
            self.0 += bytes.into_iter().count();
        }
    }
    let encoded = postcard::to_extend(rejection, Count(0)).map_or(0, |count| count.0);
    REFUSAL_OVERHEAD_BYTES + command_id.as_str().len() + encoded
}

/// The table slots, pointers and record fields of one remembered refusal.
const REFUSAL_OVERHEAD_BYTES: usize = 96;

/// Remembered command ids, forgotten after the window (in generations: see [`Remembered`]),
/// and the refusals among them bounded in count and bytes, oldest forgotten first.
#[derive(Debug)]
pub(super) struct Idempotency {
    ids: Remembered<CommandId, Known>,
    refusals: Refusals,
}

/// The refusals remembered, oldest first, to forget them in that order.
#[derive(Debug)]
struct Refusals {
    /// By the number each was (last) remembered under: oldest first.
    by_age: BTreeMap<u64, (CommandId, usize)>,
    /// Each refusal's number in `by_age`.
    ages: IdMap<CommandId, u64>,
    next_age: u64,
    bytes: usize,
    bounds: RefusalBounds,
    /// Refusals forgotten for the bound since the store was last asked to forget them.
    forgotten_since_store: usize,
}

impl Idempotency {
    /// Nothing remembered yet, for a window of `window_ms`, with the default bounds on
    /// refusals until [`Idempotency::bound_refusals`].
    pub(super) fn new(window_ms: u64) -> Idempotency {
        let defaults = crate::engine::EngineConfig::default();
        let bounds = RefusalBounds {
            count_max: defaults.remembered_refusals_max,
            bytes_max: defaults.remembered_refusals_bytes_max,
        };
        let refusals = Refusals {
            by_age: BTreeMap::new(),
            ages: IdMap::default(),
            next_age: 0,
            bytes: 0,
            bounds,
            forgotten_since_store: 0,
        };
        Idempotency { ids: Remembered::new(window_ms), refusals }
    }

    /// Bounds the refusals remembered from now on, forgetting the oldest beyond them.
    pub(super) fn bound_refusals(&mut self, count_max: usize, bytes_max: usize) {
        self.refusals.bounds = RefusalBounds { count_max, bytes_max };
        self.trim();
    }

    /// What is remembered of `key`.
    pub(super) fn get(&self, key: &CommandId) -> Option<&Known> {
        self.ids.get(key)
    }

    /// What is remembered of `key`, to change it.
    pub(super) fn get_mut(&mut self, key: &CommandId) -> Option<&mut Known> {
        self.ids.get_mut(key)
    }

    /// Remembers `known` for `key` at `at`, replacing what was remembered of it; a refusal
    /// counts as the newest.
    pub(super) fn remember(&mut self, at: Timestamp, key: CommandId, known: Known) {
        let bytes = refusal_bytes_of(&key, &known);
        self.ids.remember(at, key.clone(), known);
        if let Some(bytes) = bytes {
            self.note_refusal(key, bytes);
        }
    }

    /// Remembers `known` for `key` at `at`; nothing is remembered of `key` yet
    /// ([`Remembered::remember_new`]).
    pub(super) fn remember_new(&mut self, at: Timestamp, key: CommandId, known: Known) {
        match refusal_bytes_of(&key, &known) {
            Some(bytes) => {
                self.ids.remember_new(at, key.clone(), known);
                self.note_refusal(key, bytes);
            }
            None => self.ids.remember_new(at, key, known),
        }
    }

    /// Forgets every generation that ended by `horizon` ([`Remembered::forget_before`]).
    pub(super) fn forget_before(&mut self, horizon: Timestamp) {
        self.ids.forget_before(horizon);
    }

    /// How many generations are kept.
    pub(super) fn generations(&self) -> usize {
        self.ids.generations()
    }

    /// Every id with its generation's start ([`Remembered::iter`]).
    pub(super) fn iter(&self) -> impl Iterator<Item = (Timestamp, &CommandId, &Known)> {
        self.ids.iter()
    }

    #[cfg(test)]
    /// How many refusals are counted against the bound (at least as many as are remembered:
    /// one forgotten with its generation still counts until it is the oldest).
    pub(super) fn refusals(&self) -> usize {
        self.refusals.by_age.len()
    }

    /// The bounds the store should keep its refusals to, when enough were forgotten since
    /// it last did: an eighth of the count bound.
    pub(super) fn store_should_forget(&mut self) -> Option<RefusalBounds> {
        let step = (self.refusals.bounds.count_max / 8).max(1);
        if self.refusals.forgotten_since_store < step {
            return None;
        }
        self.refusals.forgotten_since_store = 0;
        Some(self.refusals.bounds)
    }

    /// Counts `key`'s refusal as the newest, then forgets the oldest beyond the bounds.
    fn note_refusal(&mut self, key: CommandId, bytes: usize) {
        let refusals = &mut self.refusals;
        let age = refusals.next_age;
        refusals.next_age += 1;
        if let Some(earlier) = refusals.ages.insert(key.clone(), age)
            && let Some((_, earlier_bytes)) = refusals.by_age.remove(&earlier)
        {
            refusals.bytes -= earlier_bytes;
        }
        refusals.by_age.insert(age, (key, bytes));
        refusals.bytes += bytes;
        self.trim();
    }

    /// Forgets the oldest refusals until the count and the bytes are within the bounds.
    fn trim(&mut self) {
        let refusals = &mut self.refusals;
        while refusals.by_age.len() > refusals.bounds.count_max || refusals.bytes > refusals.bounds.bytes_max {
            let Some((_, (key, bytes))) = refusals.by_age.pop_first() else { break };
            refusals.ages.remove(&key);
            refusals.bytes -= bytes;
            refusals.forgotten_since_store += 1;
            // Only while it is still a refusal: an id forgotten with its generation and used
            // again may since have been accepted.
            if self.ids.get(&key).is_some_and(|known| matches!(known.outcome, Outcome::Rejected(_))) {
                self.ids.remove(&key);
            }
        }
        debug_assert_eq!(refusals.by_age.len(), refusals.ages.len());
    }
}

/// The bytes `known` is counted as, when it is a refusal.
fn refusal_bytes_of(key: &CommandId, known: &Known) -> Option<usize> {
    match &known.outcome {
        Outcome::Rejected(rejection) => Some(refusal_bytes(key, rejection)),
        _ => None,
    }
}

/// Asks the store to forget `shop`'s refusal records beyond `bounds`, on a blocking thread,
/// off the writer's path: a failure is logged and tried again at the next step, and
/// recovery bounds what it reads anyway.
pub(super) fn forget_in_store(store: &Arc<dyn EventStore>, shop: &ShopId, bounds: RefusalBounds) {
    let (store, shop, runtime) = (store.clone(), shop.clone(), tokio::runtime::Handle::current());
    tokio::task::spawn_blocking(move || {
        let forgotten = store.forget_rejections(&shop, bounds.count_max, bounds.bytes_max);
        if let Err(error) = runtime.block_on(forgotten) {
            tracing::warn!(shop = %shop, %error, "the store could not forget old refusals");
        }
    });
}

/// How many distinct shortages [`SharedShortages`] keeps before it starts afresh.
const SHARED_SHORTAGES_MAX: usize = 4_096;

/// One remembered refusal per distinct shortage. On a sold-out day most orders are refused
/// because one of a few hot SKUs has nothing left, and a day of them is remembered: shared,
/// they cost a pointer each instead of two allocations.
///
/// Only [`Rejection::InsufficientStock`] is shared: its fields are ids and integers, so
/// rejections that compare equal also read and serialize the same (two equal decimals may
/// not). Bounded: once full it is cleared, which costs sharing, never correctness.
#[derive(Default)]
pub(super) struct SharedShortages {
    by_shortages: IdMap<Vec<Shortage>, Arc<Rejection>>,
}

impl SharedShortages {
    /// `rejection` behind a pointer, the one shared with equal refusals where there is one.
    pub(super) fn share(&mut self, rejection: &Rejection) -> Arc<Rejection> {
        let Rejection::InsufficientStock { shortages } = rejection else {
            return Arc::new(rejection.clone());
        };
        if let Some(shared) = self.by_shortages.get(shortages) {
            debug_assert_eq!(**shared, *rejection);
            return Arc::clone(shared);
        }
        if self.by_shortages.len() >= SHARED_SHORTAGES_MAX {
            self.by_shortages.clear();
        }
        let shared = Arc::new(rejection.clone());
        self.by_shortages.insert(shortages.clone(), Arc::clone(&shared));
        assert!(self.by_shortages.len() <= SHARED_SHORTAGES_MAX);
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(n: u64) -> Known {
        let rejection = Rejection::UnknownOrder { order_id: format!("O-{n}").as_str().into() };
        Known { fingerprint: Fingerprint::default(), outcome: Outcome::Rejected(Arc::new(rejection)) }
    }

    fn id(n: u64) -> CommandId {
        CommandId::new(&format!("c-{n}")).expect("an id")
    }

    /// A flood of distinct refusals keeps the newest `count_max`, oldest forgotten first;
    /// accepted commands are not counted nor forgotten; the store is asked every eighth.
    #[test]
    fn refusals_are_bounded_in_count_and_bytes_oldest_first() {
        let mut idempotency = Idempotency::new(1_000_000);
        idempotency.bound_refusals(80, usize::MAX);
        let accepted = Known { fingerprint: Fingerprint::default(), outcome: Outcome::Unchanged };
        idempotency.remember_new(Timestamp(0), id(1_000_000), accepted);
        let mut asked = 0;
        for n in 0..1_000 {
            idempotency.remember_new(Timestamp(n), id(n), refused(n));
            assert!(idempotency.refusals() <= 80);
            asked += usize::from(idempotency.store_should_forget().is_some());
        }
        assert_eq!(asked, (1_000 - 80) / 10, "asked once per 10 forgotten");
        assert!((920..1_000).all(|n| idempotency.get(&id(n)).is_some()), "the newest are remembered");
        assert!((0..920).all(|n| idempotency.get(&id(n)).is_none()), "the oldest are forgotten");
        assert!(idempotency.get(&id(1_000_000)).is_some(), "accepted ids are not refusals");
        // Remembered again, a refusal is the newest: the next one pushes out 920 instead.
        idempotency.remember(Timestamp(2_000), id(920), refused(920));
        idempotency.remember_new(Timestamp(2_000), id(5_000), refused(5_000));
        assert!(idempotency.get(&id(920)).is_some() && idempotency.get(&id(921)).is_none());
        // The bytes bound: each refusal here counts the same, so it keeps a fixed number.
        let each = refusal_bytes(&id(9_999), &Rejection::UnknownOrder { order_id: "O-9999".into() });
        idempotency.bound_refusals(1_000, each * 10);
        assert!((10..=80).contains(&idempotency.refusals()), "the older ids are shorter");
        for n in 9_000..9_100 {
            idempotency.remember_new(Timestamp(3_000), id(n), refused(n));
        }
        assert_eq!(idempotency.refusals(), 10);
        assert!((9_090..9_100).all(|n| idempotency.get(&id(n)).is_some()));
    }

    /// Refusals for equal shortages share one allocation; any other refusal, or a different
    /// shortage, gets its own; and the table never holds more than its bound.
    #[test]
    fn refusals_for_the_same_shortage_are_remembered_once() {
        let short = |sku: &str, requested: u64| Rejection::InsufficientStock {
            shortages: vec![Shortage { sku: sku.into(), requested, available: 0 }],
        };
        let mut shared = SharedShortages::default();
        let (first, again) = (shared.share(&short("HOT", 1)), shared.share(&short("HOT", 1)));
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(*first, short("HOT", 1));
        let other = shared.share(&short("HOT", 2));
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(*other, short("HOT", 2));
        let unknown = Rejection::UnknownOrder { order_id: "O-1".into() };
        let (one, two) = (shared.share(&unknown), shared.share(&unknown));
        assert!(!Arc::ptr_eq(&one, &two), "only shortages are shared");
        assert_eq!((*one == unknown, shared.by_shortages.len()), (true, 2));
        for requested in 0..SHARED_SHORTAGES_MAX as u64 + 10 {
            assert_eq!(*shared.share(&short("COLD", requested)), short("COLD", requested));
            assert!(shared.by_shortages.len() <= SHARED_SHORTAGES_MAX);
        }
    }
}
