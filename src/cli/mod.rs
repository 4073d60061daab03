//! The command line: what the `emporium` binary does, one file per subcommand. The binary
//! (`src/main.rs`) only parses the arguments and hands each subcommand's flags to its
//! `run`; every `run` ends in a [`CliError`] whose message the binary prints.
//!
//! - [`serve`]: the HTTP/JSON API until SIGTERM or Ctrl-C (the default).
//! - [`demo`]: the scripted shop day through the engine on sled, then stock and orders.
//! - [`verify`]: checksums and hash chain of every shop log.
//! - [`replay`]: every view rebuilt from zero (or as of a position or time), compared with
//!   the snapshotted and live views on `--check`.
//! - [`audit`]: the history of one order as a timeline.
//! - [`export`] and [`import`]: every shop log as JSON Lines, and a fresh store from them.
//! - [`loadgen`]: the promotion-day rehearsal, in-process or over HTTP, and its report.
//! - [`drill`]: the hidden durability drill the crash test kills.
//! - [`shared`]: what several of them share: the error, output, opening the store, the
//!   engine's settings, the runtime and progress bars.
//! - [`process`]: settings of the whole process that a binary opts into.
//!
//! Nothing else in the crate uses this module, except [`process`], which the benches use.

pub mod audit;
pub mod demo;
pub mod drill;
pub mod export;
pub mod import;
pub mod loadgen;
pub mod process;
pub mod replay;
pub mod serve;
pub mod shared;
pub mod verify;

pub use shared::CliError;
