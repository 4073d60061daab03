//! `emporium replay`: rebuilds every view of every shop from the first event of its log
//! (or up to `--as-of`, a position or a time) and prints each view's state hash and the
//! rate of the rebuild. With `--check` it also resumes the views from their newest snapshot
//! and the log after it, and, when building to the end, opens an engine to compare with
//! the live views it builds; any difference, or a ledger that does not balance, exits
//! non-zero. It changes nothing in the data directory: it reads a private copy of the
//! store (and, with `--check`, of the snapshots), and the engine it opens runs on that copy
//! at each shop's last recorded time, so that nothing falls due.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use emporium_projections::AsOf;
use emporium_snapshots::SnapshotStore;
use indicatif::ProgressBar;

use crate::cli::shared::{
    CliError, DATA_DEFAULT, copy_snapshots, engine_config, open_existing_store, out, progress_bar,
};
use crate::domain::ids::{ShopId, Timestamp};
use crate::engine::{Engine, ManualClock, VIEWS_SNAPSHOT_SCHEMA};
use crate::log::layout;
use crate::log::store::{EventStore, SledStore};
use crate::views::Views;

/// The flags of `emporium replay`.
#[derive(clap::Args)]
pub struct Args {
    /// The data directory.
    #[arg(long, default_value = DATA_DEFAULT)]
    pub data: PathBuf,
    /// Build as of a log position (a number) or a time (RFC 3339, e.g. 2026-11-11T12:00:00Z).
    #[arg(long)]
    pub as_of: Option<String>,
    /// Compare with the snapshotted and live views.
    #[arg(long)]
    pub check: bool,
}

/// Rebuilds (and with `--check` compares) the views of every shop.
pub async fn run(args: Args) -> Result<(), CliError> {
    let Args { data, as_of, check } = args;
    let as_of = parse_as_of(as_of.as_deref())?;
    let store = open_existing_store(&data, "stop it to rebuild the views; while it runs, GET /v1/shops/{shop}/verify")?;
    if check {
        // The snapshots compared with, and those the engine below writes, are the copy's.
        copy_snapshots(&data, &store)?;
    }
    let data = store.data().to_path_buf();
    let mut differences = Vec::new();
    let mut rebuilt: Vec<(ShopId, Views)> = Vec::new();
    for shop in store.shops().await.map_err(|e| e.to_string())? {
        let last = store.last_position(&shop).await.map_err(|e| e.to_string())?;
        let views = from_zero(store.as_ref(), &shop, last, as_of).await?;
        if let Err(broken) = views.ledger.projection().check(views.shop.projection()) {
            differences.push(format!("shop {shop}: the ledger does not hold: {broken}"));
        }
        if check && !agrees_with_snapshot(store.as_ref(), &data, &shop, last, as_of, &views).await? {
            differences.push(format!("shop {shop}: the snapshotted views differ"));
        }
        rebuilt.push((shop, views));
    }
    if check && as_of == AsOf::End {
        compare_with_live(store.store.clone(), &data, &rebuilt, &mut differences).await?;
    }
    if differences.is_empty() {
        out!("{}", if check { "every build agrees" } else { "rebuilt" })?;
        Ok(())
    } else {
        Err(differences.join("; ").into())
    }
}

/// `--as-of`: a position, or an RFC 3339 time.
fn parse_as_of(text: Option<&str>) -> Result<AsOf, String> {
    let Some(text) = text else { return Ok(AsOf::End) };
    if let Ok(position) = text.parse::<u64>() {
        return Ok(AsOf::Position(position));
    }
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("--as-of takes a log position or an RFC 3339 time, not {text:?}: {e}"))?;
    let ms = time.duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_millis();
    Ok(AsOf::TimeMs(u64::try_from(ms).unwrap_or(u64::MAX)))
}

/// Builds every view of `shop` from the log as of `as_of`, page by page, moving `bar` along.
async fn rebuild(
    store: &dyn EventStore,
    shop: &ShopId,
    views: &mut Views,
    as_of: AsOf,
    bar: &ProgressBar,
) -> Result<(), String> {
    loop {
        let page = store.read_from(shop, views.checkpoint(), 65_536).await.map_err(|e| e.to_string())?;
        let done = page.is_empty() || views.catch_up(&page, as_of).map_err(|e| e.to_string())?;
        bar.set_position(views.checkpoint());
        if done {
            return Ok(());
        }
    }
}

/// Prints the state hash of each of `views`, under `label`.
fn print_hashes(label: &str, views: &Views) -> Result<(), String> {
    out!("  {label} (as of position {}):", views.checkpoint())?;
    for (name, hash) in views.hashes().map_err(|e| e.to_string())? {
        out!("    {name:<10} {hash}")?;
    }
    Ok(())
}

/// The views of `shop` (whose log ends at `last`) built from zero as of `as_of`, printed
/// with how long the build took.
async fn from_zero(store: &dyn EventStore, shop: &ShopId, last: u64, as_of: AsOf) -> Result<Views, String> {
    let bar = progress_bar(last, format!("replaying shop {shop}"));
    let started = std::time::Instant::now();
    let mut views = Views::new();
    rebuild(store, shop, &mut views, as_of, &bar).await?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    out!(
        "shop {shop}: rebuilt {} events from zero in {:.3} s ({:.0} events/s)",
        views.checkpoint(),
        seconds,
        views.checkpoint() as f64 / seconds.max(1e-9)
    )?;
    print_hashes("from zero", &views)?;
    Ok(views)
}

/// Whether the views of `shop` resumed from their newest snapshot at most at `views`'
/// position, and built on from the log, hash like `views`. True when there is no usable
/// snapshot to compare with, which is said.
async fn agrees_with_snapshot(
    store: &dyn EventStore,
    data: &Path,
    shop: &ShopId,
    last: u64,
    as_of: AsOf,
    views: &Views,
) -> Result<bool, String> {
    let snapshots = SnapshotStore::open(&layout::snapshot_dir(data).join(shop.as_str()).join("views"), 3)
        .map_err(|e| e.to_string())?;
    let loaded = snapshots.load_newest_at_most(VIEWS_SNAPSHOT_SCHEMA, views.checkpoint()).map_err(|e| e.to_string())?;
    for skipped in &loaded.skipped {
        out!("  warning: snapshot {} skipped: {}", skipped.path.display(), skipped.reason)?;
    }
    let Some((position, mut resumed)) =
        loaded.snapshot.and_then(|s| Views::decode(&s.state, s.position).map(|v| (s.position, v)))
    else {
        out!("  no usable view snapshot to compare")?;
        return Ok(true);
    };
    let bar = progress_bar(last, format!("replaying shop {shop} from the snapshot at {position}"));
    bar.set_position(position);
    rebuild(store, shop, &mut resumed, as_of, &bar).await?;
    bar.finish_and_clear();
    print_hashes(&format!("from the snapshot at {position} and the tail"), &resumed)?;
    Ok(resumed.hashes().map_err(|e| e.to_string())? == views.hashes().map_err(|e| e.to_string())?)
}

/// Opens an engine on the store (a copy, in the copy's data directory `data`) and compares
/// the live views of each shop, once they reach the position of the `rebuilt` ones, with
/// them; adds each difference to `differences`.
async fn compare_with_live(
    store: Arc<SledStore>,
    data: &Path,
    rebuilt: &[(ShopId, Views)],
    differences: &mut Vec<String>,
) -> Result<(), String> {
    // At time zero each shop decides at its own last recorded time: nothing falls due that
    // its log has not recorded, so the engine appends nothing (and would only append to
    // the copy).
    let clock = Arc::new(ManualClock::new(Timestamp(0)));
    let engine = Engine::open(store, clock, engine_config(data)).await.map_err(|e| e.to_string())?;
    for (shop, views) in rebuilt {
        let reached = engine.views_reach(shop, views.checkpoint(), std::time::Duration::from_secs(600)).await;
        let live = engine.views(shop, |live| (live.checkpoint(), live.hashes())).map_err(|e| e.to_string())?;
        let live = (live.0, live.1.map_err(|e| e.to_string())?);
        out!("shop {shop}: live views reached {}", reached.map_err(|e| e.to_string())?)?;
        if live.1 != views.hashes().map_err(|e| e.to_string())? {
            differences.push(format!("shop {shop}: the live views differ (at position {})", live.0));
        }
    }
    engine.close().await;
    Ok(())
}
