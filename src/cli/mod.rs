//! The command line: what the `emporium` binary does, one file per subcommand.
//!
//! - [`process`]: settings of the whole process that a binary opts into.

pub mod process;
