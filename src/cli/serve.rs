//! `emporium serve`, the default: the HTTP/JSON API on a data directory until SIGTERM or
//! Ctrl-C. It reads the bearer tokens (`--tokens`, else EMPORIUM_TOKENS; with neither it
//! only listens on loopback), opens the engine on the store with the shop `main`, serves,
//! and on the signal answers the requests in flight and closes the engine, so that every
//! acknowledged command is durable before it exits 0.

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
        }
    }
}

/// Serves until SIGTERM or Ctrl-C, then closes the engine.
pub async fn run(args: Args) -> Result<(), CliError> {
    let Args { data, listen, tokens, orders_hot_max, shops_max } = args;
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
    let app = App::new(engine.clone(), tokens, ServiceConfig::default());
    let served = service::serve(listener, app, stop_signal()).await;
    tracing::info!("stopping: requests in flight are answered; closing the engine");
    engine.close().await;
    served.map_err(|e| format!("the server failed: {e}"))?;
    Ok(out!("emporium stopped; every acknowledged command is durable")?)
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
