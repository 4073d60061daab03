//! `emporium verify`: reads every shop log of a data directory back from the disk and checks
//! each record's checksum and the hash chain through it. Prints one line a shop (its events
//! and the chain's head, or the first bad position) and exits non-zero naming every shop
//! that failed.

use std::path::PathBuf;

use crate::cli::shared::{CliError, DATA_DEFAULT, hex, open_existing_store, out};
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

/// Verifies every shop log.
pub async fn run(args: Args) -> Result<(), CliError> {
    let Args { data, deep } = args;
    let store = open_existing_store(&data)?;
    let mut failed = Vec::new();
    for shop in store.shops().await.map_err(|e| e.to_string())? {
        let verified = store.verify(&shop).await;
        let verified = match verified {
            Ok(report) if deep => crate::log::transfer::replay_check(store.as_ref(), &shop).await.map(|_| report),
            other => other,
        };
        match verified {
            Ok(report) => out!("shop {shop}: {} events, chain intact, head {}", report.events, hex(&report.head))?,
            Err(StoreError::Corrupt { corruption, .. }) => {
                out!("shop {shop}: FAILED at position {}: {}", corruption.position, corruption.reason)?;
                failed.push(format!("shop {shop} at position {}", corruption.position));
            }
            Err(error) => return Err(format!("shop {shop}: {error}").into()),
        }
    }
    if failed.is_empty() { Ok(()) } else { Err(format!("verification failed: {}", failed.join(", ")).into()) }
}
