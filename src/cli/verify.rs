//! `emporium verify`: reads every shop log of a data directory back from the disk and checks
//! each record's checksum and the hash chain through it, and that each log reaches where
//! the witness (`<data>/witness`, written by the engine) says it ended, carrying the record
//! witnessed there. Prints one line a shop (its events and the chain's head, or the first
//! bad position, or how it falls short of its witness) and exits non-zero naming every shop
//! that failed. It changes nothing in the data directory: it reads a private copy of the
//! store, and refuses while a server holds the store (the server verifies at
//! `GET /v1/shops/{shop}/verify`).

use std::path::PathBuf;

use crate::cli::shared::{CliError, DATA_DEFAULT, hex, open_existing_store, out};
use crate::engine::witness::{self, Standing};
use crate::log::layout;
use crate::log::store::{EventStore, StoreError};

/// The flags of `emporium verify`.
#[derive(clap::Args)]
pub struct Args {
    /// The data directory.
    #[arg(long, default_value = DATA_DEFAULT)]
    pub data: PathBuf,
    /// Also replay each shop whose chain is intact, as the server does when it starts, and
    /// report the first event that does not fit its shop (`transfer::replay_check`).
    #[arg(long)]
    pub deep: bool,
}

/// What to do while a server holds the store.
pub const WHILE_SERVED: &str = "while it runs, verify through it: GET /v1/shops/{shop}/verify with an auditor token";

/// Verifies every shop log.
pub async fn run(args: Args) -> Result<(), CliError> {
    let Args { data, deep } = args;
    // The witness first: it is written only once the log is durable, so the log copied
    // after it reaches at least as far, even if a server wrote both in between.
    let witnessed = witness::read(&layout::witness_path(&data))?;
    let store = open_existing_store(&data, WHILE_SERVED)?;
    let mut shops = store.shops().await.map_err(|e| e.to_string())?;
    shops.extend(witnessed.keys().cloned());
    shops.sort();
    shops.dedup();
    let mut failed = Vec::new();
    for shop in shops {
        let verified = match store.verify(&shop).await {
            Ok(report) if deep => crate::log::transfer::replay_check(store.as_ref(), &shop).await.map(|_| report),
            other => other,
        };
        match verified {
            Ok(report) => {
                let standing = witness::compare(store.as_ref(), &shop, witnessed.get(&shop).copied())
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(refusal) = standing.refusal() {
                    out!("shop {shop}: FAILED: {} events, chain intact, but {refusal}", report.events)?;
                    failed.push(match standing {
                        Standing::Shorter { witnessed, actual } => {
                            format!("shop {shop} ends at position {actual}, before its witnessed position {witnessed}")
                        }
                        _ => format!("shop {shop} differs from its witness"),
                    });
                    continue;
                }
                let vouched = match standing {
                    Standing::Agrees(w) => format!(", witnessed at {}", w.position),
                    _ => String::new(),
                };
                out!("shop {shop}: {} events, chain intact{vouched}, head {}", report.events, hex(&report.head))?
            }
            Err(StoreError::Corrupt { corruption, .. }) => {
                out!("shop {shop}: FAILED at position {}: {}", corruption.position, corruption.reason)?;
                failed.push(format!("shop {shop} at position {}", corruption.position));
            }
            Err(error) => return Err(format!("shop {shop}: {error}").into()),
        }
    }
    if failed.is_empty() { Ok(()) } else { Err(format!("verification failed: {}", failed.join(", ")).into()) }
}
