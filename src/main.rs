//! The `emporium` command line: parses the arguments and runs the subcommand's
//! [`emporium::cli`] module on a tokio runtime.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use emporium::cli::{self, audit, demo, drill, export, import, loadgen, replay, serve, verify};

/// mimalloc instead of the system allocator: the engine, the views and the load generator
/// allocate and free small strings and vectors for every command and event, and glibc's
/// allocator took a fifth of a rehearsal's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "emporium", version, about = "An event-sourced order and inventory engine for online shops")]
struct Cli {
    #[command(subcommand)]
    command: Option<Action>,
}

#[derive(Subcommand)]
enum Action {
    /// Serve the HTTP/JSON API on the data directory until SIGTERM or Ctrl-C, then finish
    /// and sync the requests in flight and exit 0 (the default). Creates the shop `main` if
    /// it is missing.
    Serve(serve::Args),
    /// Run the scripted shop day through the engine on sled and print stock and orders.
    /// Running it again on the same data answers every command from the log.
    Demo(demo::Args),
    /// Check the checksums and hash chain of every shop log; exit non-zero naming the shop
    /// and the first bad position if any fails.
    Verify(verify::Args),
    /// Rebuild every view of every shop from zero and print each one's state hash; with
    /// `--check`, also compare them with the snapshotted views (and, without `--as-of`, with
    /// the live views an engine builds), exiting non-zero on any difference.
    Replay(replay::Args),
    /// Print the full history of one order as a timeline.
    Audit(audit::Args),
    /// Write every event of every shop as JSON Lines, each with its hash in the shop's chain:
    /// a header line before each shop's events, an end line counting them all.
    Export(export::Args),
    /// Rebuild a fresh store from an export. The whole export is checked first (positions,
    /// streams, the hash chain) and nothing is written unless every line passes.
    Import(import::Args),
    /// Rehearse a promotion day: the `double11` scenario against an engine embedded on sled
    /// (every order synced before it is acknowledged) or a running server, then check that no
    /// SKU was oversold, every accepted order holds its lines, the ledger balances and a replay
    /// from zero equals the live state. Exits non-zero when a check fails.
    Loadgen(loadgen::Args),
    /// Durability drill: run the engine on sled under load and print every acknowledged
    /// command as `ack <command id> <first position> <last position>`. Used by the crash
    /// test, which kills it at random moments; stops by itself after `--commands` or `--seconds`.
    #[command(hide = true)]
    Drill(drill::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::process::log_to_stderr();
    // Huge pages off, before the engine allocates (`emporium::cli::process` says why).
    if let Err(error) = cli::process::disable_transparent_huge_pages() {
        tracing::warn!("transparent huge pages stay on: {error}");
    }
    let action = cli.command.unwrap_or_else(|| Action::Serve(serve::Args::default()));
    // A rehearsal over HTTP runs on one thread (`loadgen::Args::over_http` says why).
    let one_thread = matches!(&action, Action::Loadgen(args) if args.over_http());
    let runtime = match cli::shared::runtime(one_thread) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match action {
        Action::Serve(args) => runtime.block_on(serve::run(args)),
        Action::Demo(args) => runtime.block_on(demo::run(args)),
        Action::Verify(args) => runtime.block_on(verify::run(args)),
        Action::Replay(args) => runtime.block_on(replay::run(args)),
        Action::Audit(args) => runtime.block_on(audit::run(args)),
        Action::Export(args) => runtime.block_on(export::run(args)),
        Action::Import(args) => runtime.block_on(import::run(args)),
        Action::Loadgen(args) => runtime.block_on(loadgen::run(args)),
        Action::Drill(args) => runtime.block_on(drill::run(args)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
