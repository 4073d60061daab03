//! emporium-projections: the projection engine.
//!
//! A projection folds an ordered, gap-free log of facts into a read model (stock levels,
//! order status, a ledger, analytics). This crate knows nothing about shops: it is generic
//! over the fact type, which only has to say where it stands in the log ([`Fact`]).
//!
//! Guarantees:
//! - **Deterministic.** A [`Projection`] folds facts with no other input: it never reads a
//!   clock, never draws a random number, never does IO, and never appends facts. The same
//!   facts in the same order give the same state, whose [`StateHash`] compares two builds
//!   (rebuilt from zero, resumed from a snapshot, or followed live).
//! - **Gap-free.** A [`Runner`] applies each position exactly once, in order: a fact at or
//!   below its checkpoint is skipped as already folded, a fact past the next position is
//!   refused as a gap, and nothing is applied from it.
//! - **As of any point.** [`AsOf`] stops a build at a position or a recorded time, so a
//!   projection can be queried as the log stood then.
//!
//! Where facts come from (a store, a snapshot's tail, a live feed) is the caller's concern;
//! the runner only folds what it is handed.

#![deny(missing_docs)]

use std::fmt;

/// Something recorded in an ordered log.
pub trait Fact {
    /// Its position in the log: gap-free, from 1.
    fn position(&self) -> u64;
    /// When it was recorded, in milliseconds since the Unix epoch.
    fn recorded_at_ms(&self) -> u64;
}

/// A read model folded from facts.
pub trait Projection {
    /// The facts it folds.
    type Fact: Fact;

    /// A name, unique among the projections of one log, stable across releases.
    fn name(&self) -> &'static str;

    /// Folds one fact. Must depend on nothing but the state and the fact.
    fn apply(&mut self, fact: &Self::Fact);

    /// The state in a canonical encoding: equal states encode to equal bytes. Fails only
    /// when part of the state cannot be read back from where the projection's owner moved
    /// it (see [`Runner::projection_mut`]).
    fn encode(&self) -> Result<Vec<u8>, EncodeError>;
}

/// A projection's state could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodeError(pub String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the projection's state could not be encoded: {}", self.0)
    }
}

impl std::error::Error for EncodeError {}

/// A point in the log to build up to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsOf {
    /// Every fact.
    End,
    /// Facts at or before this position.
    Position(u64),
    /// Facts recorded at or before this time (milliseconds since the Unix epoch).
    TimeMs(u64),
}

impl AsOf {
    /// Whether `fact` belongs to the log as of this point.
    pub fn admits(&self, fact: &impl Fact) -> bool {
        match self {
            AsOf::End => true,
            AsOf::Position(position) => fact.position() <= *position,
            AsOf::TimeMs(time_ms) => fact.recorded_at_ms() <= *time_ms,
        }
    }
}

/// A deterministic digest of a projection's name, checkpoint and state.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateHash(pub [u8; 32]);

impl fmt::Display for StateHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for StateHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateHash({self})")
    }
}

/// A fact that does not follow the runner's checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The position the runner expected next.
    pub expected: u64,
    /// The position it was handed.
    pub found: u64,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected the fact at position {}, found {}", self.expected, self.found)
    }
}

impl std::error::Error for Gap {}

/// How far a [`Runner::catch_up`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Facts folded.
    pub applied: u64,
    /// Whether it stopped at a fact past its [`AsOf`]: the build is complete as of that point.
    pub reached_as_of: bool,
}

/// Folds facts into a projection, keeping its checkpoint (the last position folded).
pub struct Runner<P> {
    projection: P,
    checkpoint: u64,
    recorded_at_ms: u64,
}

impl<P: Projection> Runner<P> {
    /// A runner for a projection that has folded nothing.
    pub fn new(projection: P) -> Runner<P> {
        Runner { projection, checkpoint: 0, recorded_at_ms: 0 }
    }

    /// A runner for a projection that has folded everything up to `checkpoint` (from a
    /// snapshot, say).
    pub fn resume(projection: P, checkpoint: u64) -> Runner<P> {
        Runner { projection, checkpoint, recorded_at_ms: 0 }
    }

    /// Folds `fact` if it is the next position. Returns whether it was folded: a fact at or
    /// below the checkpoint was already folded and is skipped.
    pub fn apply(&mut self, fact: &P::Fact) -> Result<bool, Gap> {
        let position = fact.position();
        if position <= self.checkpoint {
            return Ok(false);
        }
        if position != self.checkpoint + 1 {
            return Err(Gap { expected: self.checkpoint + 1, found: position });
        }
        self.projection.apply(fact);
        self.checkpoint = position;
        self.recorded_at_ms = self.recorded_at_ms.max(fact.recorded_at_ms());
        Ok(true)
    }

    /// Folds facts in order until one is past `as_of` or they run out.
    pub fn catch_up<'f>(&mut self, facts: impl IntoIterator<Item = &'f P::Fact>, as_of: AsOf) -> Result<Progress, Gap>
    where
        P::Fact: 'f,
    {
        let mut applied = 0;
        for fact in facts {
            if !as_of.admits(fact) {
                return Ok(Progress { applied, reached_as_of: true });
            }
            if self.apply(fact)? {
                applied += 1;
            }
        }
        Ok(Progress { applied, reached_as_of: false })
    }

    /// The last position folded; 0 when none.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// The latest recording time among the facts folded by this runner (0 when none).
    pub fn recorded_at_ms(&self) -> u64 {
        self.recorded_at_ms
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The projection, to change how it holds its state but never what it holds: to move
    /// part of it out of memory or back, between folds. Folding stays [`Runner::apply`]'s,
    /// and the checkpoint does not move.
    pub fn projection_mut(&mut self) -> &mut P {
        &mut self.projection
    }

    /// The projection, leaving the runner.
    pub fn into_projection(self) -> P {
        self.projection
    }

    /// The digest of the projection's name, checkpoint and state.
    pub fn state_hash(&self) -> Result<StateHash, EncodeError> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(self.projection.name().as_bytes());
        hasher.update(&[0]);
        hasher.update(&self.checkpoint.to_le_bytes());
        hasher.update(&self.projection.encode()?);
        Ok(StateHash(*hasher.finalize().as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Entry {
        position: u64,
        at_ms: u64,
        amount: i64,
    }

    impl Fact for Entry {
        fn position(&self) -> u64 {
            self.position
        }
        fn recorded_at_ms(&self) -> u64 {
            self.at_ms
        }
    }

    #[derive(Default)]
    struct Sum(i64);

    impl Projection for Sum {
        type Fact = Entry;
        fn name(&self) -> &'static str {
            "sum"
        }
        fn apply(&mut self, fact: &Entry) {
            self.0 += fact.amount;
        }
        fn encode(&self) -> Result<Vec<u8>, EncodeError> {
            Ok(self.0.to_le_bytes().to_vec())
        }
    }

    fn log() -> Vec<Entry> {
        (1..=10).map(|position| Entry { position, at_ms: position * 1000, amount: position as i64 }).collect()
    }

    fn check(as_of: AsOf, expected_sum: i64, expected_checkpoint: u64, expected_reached: bool) {
        let mut runner = Runner::new(Sum::default());
        let progress = runner.catch_up(&log(), as_of).expect("no gap");
        assert_eq!(runner.projection().0, expected_sum, "{as_of:?}");
        assert_eq!(runner.checkpoint(), expected_checkpoint, "{as_of:?}");
        assert_eq!(progress.reached_as_of, expected_reached, "{as_of:?}");
    }

    #[test]
    fn builds_as_of_any_point() {
        check(AsOf::End, 55, 10, false);
        check(AsOf::Position(4), 10, 4, true);
        check(AsOf::Position(0), 0, 0, true);
        check(AsOf::TimeMs(3_500), 6, 3, true);
        check(AsOf::TimeMs(99_000), 55, 10, false);
    }

    #[test]
    fn resuming_skips_what_was_folded_and_refuses_gaps() {
        let log = log();
        let mut whole = Runner::new(Sum::default());
        whole.catch_up(&log, AsOf::End).expect("no gap");
        let mut resumed = Runner::resume(Sum(10), 4);
        let progress = resumed.catch_up(&log, AsOf::End).expect("no gap");
        assert_eq!(progress.applied, 6);
        assert_eq!(resumed.state_hash(), whole.state_hash());
        assert!(whole.state_hash().is_ok());
        let mut gapped = Runner::new(Sum::default());
        assert_eq!(gapped.apply(&log[2]), Err(Gap { expected: 1, found: 3 }));
        assert_eq!((gapped.checkpoint(), gapped.projection().0), (0, 0));
        let mut early = Runner::new(Sum::default());
        early.catch_up(&log[..3], AsOf::End).expect("no gap");
        assert_ne!(early.state_hash(), whole.state_hash());
    }
}
