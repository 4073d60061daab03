//! Idempotency: every command id the engine remembers within its window, with what the
//! command was ([`Known::fingerprint`]) and what happened to it ([`Outcome`]): the positions
//! of its events, nothing, or its refusal. The ids live in a [`Remembered`], forgotten in
//! generations of engine time; refusals for the same shortage share one allocation
//! ([`SharedShortages`]). Engine snapshots hold [`Known`] as it is.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::idmap::IdMap;
use crate::domain::ids::CommandId;
use crate::domain::rejection::{Rejection, Shortage};
use crate::engine::api::Positions;
use crate::engine::remembered::Remembered;
use crate::log::record::Fingerprint;

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

/// Remembered command ids, forgotten after the window (in generations: see [`Remembered`]).
pub(super) type Idempotency = Remembered<CommandId, Known>;

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
