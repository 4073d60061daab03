//! What callers exchange with the engine: a [`Request`] in; an [`Accepted`] answer with the
//! [`Positions`] of its events, or a [`CommandError`] out; [`OpenError`] when the engine
//! cannot open; and what it reports while it runs ([`EngineStats`], [`ShopProgress`]).

use serde::{Deserialize, Serialize};

use crate::domain::command::Command;
use crate::domain::event::Event;
use crate::domain::ids::{CommandId, ShopId, Timestamp};
use crate::domain::rejection::Rejection;
use crate::engine::metrics::Histogram;
use crate::log::store::StoreError;

/// A command with what the log records about its sending.
#[derive(Clone, Debug)]
pub struct Request {
    /// For idempotency; generated when absent.
    pub command_id: Option<CommandId>,
    /// Groups commands of one business transaction; the command id when absent.
    pub correlation_id: Option<String>,
    /// Who sends it: a user, a token's name, a system.
    pub actor: String,
    /// What to do.
    pub command: Command,
}

/// Longest actor or correlation id, in characters.
pub const LABEL_LENGTH_MAX: usize = 128;

impl Request {
    /// A request from `actor` with a generated command id.
    pub fn new(actor: &str, command: Command) -> Request {
        Request { command_id: None, correlation_id: None, actor: actor.to_owned(), command }
    }

    /// The same request with a caller-chosen command id.
    pub fn with_id(mut self, command_id: CommandId) -> Request {
        self.command_id = Some(command_id);
        self
    }
}

/// The positions of an accepted command's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    /// The first event's position.
    pub first: u64,
    /// The last event's position.
    pub last: u64,
}

/// An accepted command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Its id.
    pub command_id: CommandId,
    /// Where its events are; `None` when it produced none.
    pub positions: Option<Positions>,
    /// Whether this answer repeats an earlier execution of the same id.
    pub replayed: bool,
    /// The events it recorded, at `positions`; empty when `replayed` (they are in the log).
    pub events: Vec<Event>,
}

/// Why a command was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The shop's rules refused it; nothing changed. Repeats keep this answer.
    #[error("rejected: {0}")]
    Rejected(Rejection),
    /// The id names another command.
    #[error("command id {command_id} was used for a different command")]
    IdempotencyConflict {
        /// The id.
        command_id: CommandId,
    },
    /// The request itself is malformed (actor, correlation id).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No such shop.
    #[error("unknown shop {0}")]
    UnknownShop(ShopId),
    /// The shop's queue is full; try again shortly.
    #[error("shop {0} is overloaded")]
    Overloaded(ShopId),
    /// The shop cannot take commands: its storage failed or its log failed verification.
    #[error("shop {shop} is unavailable: {reason}")]
    Unavailable {
        /// The shop.
        shop: ShopId,
        /// Why.
        reason: String,
    },
}

/// Why the engine could not open, or a shop could not be created.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Creating one more shop would pass [`EngineConfig::shops_max`](crate::engine::EngineConfig::shops_max);
    /// nothing was created.
    #[error("the engine serves {shops_max} shops, its limit; no shop was created")]
    ShopLimitReached {
        /// The limit.
        shops_max: usize,
    },
}

/// Whether a shop takes commands, for monitoring ([`crate::engine::Engine::health`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShopHealth {
    /// It takes commands.
    Serving,
    /// Its store failed: its commands are answered [`CommandError::Unavailable`] while its
    /// writer retries, with a backoff of 100 ms doubling to 5 s, to heal the store and
    /// rebuild the shop's state from its log.
    Healing {
        /// The failure that started it.
        reason: String,
        /// When, by the engine clock.
        since: Timestamp,
        /// Why the last attempt to heal failed, if one did.
        last_attempt: Option<String>,
    },
    /// Its log fails verification: it is not served until the log is repaired and the
    /// engine opened again.
    Quarantined {
        /// Why, naming the first bad position.
        reason: String,
    },
}

/// What the engine counts while it runs.
#[derive(Debug)]
pub struct EngineStats {
    /// Commands per group commit (expiries recorded by the tick included).
    pub batch_commands: Histogram,
    /// Events appended per group commit.
    pub batch_events: Histogram,
    /// Seconds from handing a batch to the store until its append returned (durable, or
    /// failed), waiting to be scheduled included.
    pub group_commit_s: Histogram,
}

/// Where one shop stands, for monitoring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShopProgress {
    /// The shop.
    pub shop: ShopId,
    /// The last position its writer made durable (or recovered to).
    pub log_position: u64,
    /// The last position its views folded.
    pub views_position: u64,
    /// Orders its writer keeps out of memory, in the spill, as of the last batch.
    pub orders_spilled: u64,
}

/// Checks a label the log records (an actor, a correlation id): 1 to [`LABEL_LENGTH_MAX`]
/// characters, none of them control characters.
pub(super) fn check_label(what: &str, text: &str) -> Result<(), CommandError> {
    let length = text.chars().count();
    if length == 0 || length > LABEL_LENGTH_MAX || text.chars().any(char::is_control) {
        return Err(CommandError::InvalidRequest(format!(
            "{what} must be 1 to {LABEL_LENGTH_MAX} characters without control characters"
        )));
    }
    Ok(())
}
