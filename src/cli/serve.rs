//! `emporium serve`, the default: the HTTP/JSON API on a data directory until SIGTERM or
//! Ctrl-C. It reads the bearer tokens (`--tokens`, else EMPORIUM_TOKENS; with neither it
//! only listens on loopback), opens the engine on the store with the shop `main`, serves,
//! and on the signal answers the requests in flight and closes the engine, so that every
//! acknowledged command is durable before it exits 0. At start it raises its soft limit of
//! open files to the hard limit and keeps the connection cap below it ([`connections_cap`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cli::shared::{CliError, DATA_DEFAULT, engine_config, open_store, out};
use crate::domain::ids::ShopId;
use crate::engine::{Engine, EngineConfig, SHOPS_MAX_DEFAULT, SystemClock};
use crate::memory::tiered::HOT_DEFAULT_MAX;
use crate::service::{self, App, ServiceConfig, Tokens};

/// The flags of `emporium serve`.
#[derive(clap::Args)]
pub struct Args {
    /// The data directory.
    #[arg(long, default_value = DATA_DEFAULT)]
    pub data: PathBuf,
    /// The address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// A file of bearer tokens, one `role name token` per line (roles: admin, operator,
    /// auditor). Without it, tokens come from EMPORIUM_TOKENS (`role:name:token,...`); with
    /// neither, there is no authentication and only a loopback address is allowed.
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Most orders each shop's writer keeps in memory as values. Older ones are kept
    /// encoded and moved out of memory to an unnamed scratch file in the data directory.
    #[arg(long, default_value_t = HOT_DEFAULT_MAX)]
    pub orders_hot_max: usize,
    /// Most shops the server serves; creating one more is refused (429
    /// `shop_limit_reached`) and creates nothing.
    #[arg(long, default_value_t = SHOPS_MAX_DEFAULT)]
    pub shops_max: usize,
    /// Most connections served at once; one over it is answered 503 and closed. The cap in
    /// force is at most three quarters of the limit of open files less 128.
    #[arg(long, default_value_t = ServiceConfig::default().connections_max)]
    pub connections_max: usize,
    /// How long a request head may take to arrive, in milliseconds; then the connection is
    /// closed.
    #[arg(long, default_value_t = ServiceConfig::default().header_read_timeout_ms, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,
    /// How long a request body may take to arrive after its head, in milliseconds; then the
    /// request is answered 408.
    #[arg(long, default_value_t = ServiceConfig::default().body_read_timeout_ms, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_read_timeout_ms: u64,
    /// How long a connection may wait for its next request, in milliseconds.
    #[arg(long, default_value_t = ServiceConfig::default().idle_timeout_ms, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,
    /// How long a shutdown lets requests in flight finish, in milliseconds; then the
    /// remaining connections are closed.
    #[arg(long, default_value_t = ServiceConfig::default().shutdown_grace_ms)]
    pub shutdown_grace_ms: u64,
}

impl Default for Args {
    /// What `emporium` with no subcommand serves with: every flag at its default.
    fn default() -> Args {
        Args {
            data: PathBuf::from(DATA_DEFAULT),
            listen: "127.0.0.1:8080".to_owned(),
            tokens: None,
            orders_hot_max: HOT_DEFAULT_MAX,
            shops_max: SHOPS_MAX_DEFAULT,
            connections_max: ServiceConfig::default().connections_max,
            header_read_timeout_ms: ServiceConfig::default().header_read_timeout_ms,
            body_read_timeout_ms: ServiceConfig::default().body_read_timeout_ms,
            idle_timeout_ms: ServiceConfig::default().idle_timeout_ms,
            shutdown_grace_ms: ServiceConfig::default().shutdown_grace_ms,
        }
    }
}

/// Serves until SIGTERM or Ctrl-C, then closes the engine.
pub async fn run(args: Args) -> Result<(), CliError> {
    let service_config = service_config(&args);
    let Args { data, listen, tokens, orders_hot_max, shops_max, .. } = args;
    let address: std::net::SocketAddr =
        listen.parse().map_err(|e| format!("--listen takes an address such as 127.0.0.1:8080, not {listen:?}: {e}"))?;
    let tokens = load_tokens(tokens.as_deref())?;
    if tokens.is_empty() && !address.ip().is_loopback() {
        return Err(format!(
            "no tokens are configured, so the server only listens on a loopback address, not {address}; \
             give --tokens FILE or EMPORIUM_TOKENS"
        )
        .into());
    }
    let store = open_store(&data)?;
    let config = EngineConfig { orders_hot_max, shops_max, ..engine_config(&data) };
    let engine = Engine::open(store, Arc::new(SystemClock), config).await.map_err(|e| e.to_string())?;
    let engine = Arc::new(engine);
    engine.create_shop(&ShopId::main()).await.map_err(|e| e.to_string())?;
    let listener =
        tokio::net::TcpListener::bind(address).await.map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    if tokens.is_empty() {
        eprintln!("warning: no tokens configured: no authentication, serving on loopback only");
    }
    out!("emporium listening on http://{bound} (data in {})", data.display())?;
    let app = App::new(engine.clone(), tokens, service_config);
    let served = service::serve(listener, app, stop_signal()).await;
    tracing::info!("stopping: requests in flight are answered; closing the engine");
    engine.close().await;
    served.map_err(|e| format!("the server failed: {e}"))?;
    Ok(out!("emporium stopped; every acknowledged command is durable")?)
}

/// The service's limits from the flags, the connection cap below the descriptor limit,
/// which this raises first (so call it before opening the store).
fn service_config(args: &Args) -> ServiceConfig {
    let descriptors = raise_descriptor_limit();
    let connections_max = connections_cap(args.connections_max, descriptors);
    if connections_max < args.connections_max {
        tracing::info!(
            "serving at most {connections_max} connections, below the limit of {} open files",
            descriptors.unwrap_or_default()
        );
    }
    ServiceConfig {
        connections_max,
        header_read_timeout_ms: args.header_read_timeout_ms,
        body_read_timeout_ms: args.body_read_timeout_ms,
        idle_timeout_ms: args.idle_timeout_ms,
        shutdown_grace_ms: args.shutdown_grace_ms,
        ..ServiceConfig::default()
    }
}

/// The connection cap in force: `configured`, but at most three quarters of the process's
/// descriptor limit less 128 (64 for connections being refused, see
/// [`service::server::REFUSALS_MAX`], and 64 spare), and at least 1. The other quarter
/// and more is left to the store, the shops' files and spills: at 1,024 descriptors, 640
/// connections. Without a known limit, `configured`.
pub fn connections_cap(configured: usize, descriptors: Option<u64>) -> usize {
    let Some(descriptors) = descriptors else { return configured.max(1) };
    let room = (descriptors / 4 * 3).saturating_sub(2 * service::server::REFUSALS_MAX as u64);
    configured.min(usize::try_from(room).unwrap_or(usize::MAX)).max(1)
}

/// Raises this process's soft limit of open files to its hard limit; returns the soft limit
/// in force, or None where it cannot be read.
fn raise_descriptor_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes one rlimit, which `limit` is, and reads nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            // An unlimited hard limit is not a soft limit Linux takes (it caps at nr_open).
            let wanted = if limit.rlim_max == libc::RLIM_INFINITY { 1 << 20 } else { limit.rlim_max };
            let raised = libc::rlimit { rlim_cur: wanted.max(limit.rlim_cur), rlim_max: limit.rlim_max };
            // SAFETY: setrlimit reads one rlimit, which `raised` is.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit.rlim_cur = raised.rlim_cur;
            } else {
                tracing::warn!("cannot raise the limit of open files: {}", std::io::Error::last_os_error());
            }
        }
        #[allow(clippy::useless_conversion)] // rlim_t is not u64 everywhere
        Some(u64::try_from(limit.rlim_cur).unwrap_or(u64::MAX))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The tokens from `--tokens`, else from EMPORIUM_TOKENS, else none.
fn load_tokens(file: Option<&Path>) -> Result<Tokens, String> {
    if let Some(file) = file {
        let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        return Tokens::parse_file(&text).map_err(|e| format!("{}: {e}", file.display()));
    }
    match std::env::var("EMPORIUM_TOKENS") {
        Ok(text) => Tokens::parse_env(&text).map_err(|e| format!("EMPORIUM_TOKENS: {e}")),
        Err(std::env::VarError::NotPresent) => Ok(Tokens::none()),
        Err(error) => Err(format!("EMPORIUM_TOKENS: {error}")),
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_sits_below_the_descriptor_limit() {
        assert_eq!(connections_cap(10_000, Some(1024)), 640);
        assert_eq!(connections_cap(100, Some(1024)), 100);
        assert_eq!(connections_cap(10_000, Some(20_000)), 10_000);
        assert_eq!(connections_cap(10_000, Some(100)), 1);
        assert_eq!(connections_cap(0, None), 1);
        assert_eq!(connections_cap(500, None), 500);
    }
}
