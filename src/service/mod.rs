//! The HTTP/JSON service: the engine behind a storefront, an ERP or a dashboard.
//!
//! Guarantees, before the code:
//! - **A success is durable.** A command is answered 200/201 only after the engine synced
//!   its events; a retry with the same `Idempotency-Key` (or body `command_id`) gets the same
//!   status and body, also after a restart, because a receipt is built from the log alone.
//! - **A 4xx changes nothing.** Requests are parsed strictly (unknown fields, JSON numbers
//!   for money, more than two decimal places and overlong ids are refused) before the engine
//!   sees them, and a refusal by the shop's rules appends no event. The only 5xx answers are
//!   503 (a full shop queue or a failed shop, with `Retry-After`) and failures of the server.
//! - **Bounded.** Bodies are limited (1 MiB by default), batches to 1,000 commands, pages to
//!   1,000 events (and histories to 1,000 entries), event streams to a fixed number of
//!   followers in all, per shop and per token; the engine's queues are bounded too. So are
//!   connections, and the time a request head, a body or an idle connection may take
//!   ([`server`]).
//! - **Tenants.** A token may use the shops it names, or all ([`auth`]).
//! - **Shutdown.** When the shutdown future completes, the server stops accepting
//!   connections, ends event streams, lets every request in flight finish (its command is
//!   synced before it is answered) for up to `shutdown_grace_ms`, closes the remaining
//!   connections and returns; the caller then closes the engine.
//!
//! Codemap, in the order a command travels through it:
//! - `table.rs`: the command table, one row a command (its kind, body type, route and the
//!   resource it acts on), and what it generates: [`wire::WireCommand`] with its
//!   per-command methods, and the command routes. A new command is a row there and a body
//!   in `bodies.rs`.
//! - `bodies.rs`: the command bodies (re-exported by [`wire`]), each with its conversion
//!   into the domain's command.
//! - `parse.rs`: the one body parser: a command's body on its route, a batch and its items.
//! - [`wire`]: money, receipts, resources and event lines: the JSON besides the bodies.
//! - [`error`]: the error shape, the statuses and the one writer of error answers, refusals
//!   by the shop's rules included.
//! - [`auth`]: tokens and roles.
//! - `commands.rs`: the command routes and batches: authorize, parse, run, answer.
//! - `queries.rs`: the reads; `feed.rs`: events and Server-Sent Events; `openapi.rs`: the API
//!   description, generated from the command table and the body types.
//! - [`server`]: the accept loop: connection cap, timeouts, bounded shutdown, the error
//!   shape on hyper's own answers, a handler's panic as a 500.
//! - this file: the limits, the shared state, the router, serving, health and metrics.

mod audit;
pub mod auth;
mod bodies;
mod commands;
pub mod error;
mod feed;
mod openapi;
mod parse;
mod queries;
pub mod server;
mod table;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get, put};
use tokio::sync::{Semaphore, watch};

use crate::domain::ids::ShopId;
use crate::engine::Engine;
use crate::engine::metrics::{CounterFamily, Histogram, LATENCY_BOUNDS_S};

pub use auth::{Access, Principal, Role, Tokens};
pub use error::ApiError;

/// Limits of the service.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Largest request body.
    pub body_bytes_max: usize,
    /// Most commands in one batch.
    pub batch_commands_max: usize,
    /// Most events in one page of `/events`.
    pub page_events_max: usize,
    /// Most concurrent `/events/stream` followers in all: 256 by default.
    pub streams_max: usize,
    /// Most concurrent followers of one shop: 64 by default.
    pub streams_per_shop_max: usize,
    /// Most concurrent followers with one token (by its name; without tokens, all callers
    /// are one): 32 by default.
    pub streams_per_token_max: usize,
    /// How long a read of the views waits for them to reach the log's end.
    pub views_wait_ms: u64,
    /// Most connections served at once (default 10,000); one over it is answered 503
    /// `too_many_connections` and closed. `emporium serve` lowers it below the process's
    /// descriptor limit (see `cli::serve`). The server's limits are in [`server`].
    pub connections_max: usize,
    /// How long a request head may take to arrive, from a connection's start or from the
    /// first byte of a next request (default 10 s); then the connection is closed.
    pub header_read_timeout_ms: u64,
    /// How long a request body may take to arrive after its head (default 30 s); then the
    /// request is answered 408 `body_timeout` and the connection closed.
    pub body_read_timeout_ms: u64,
    /// How long a connection may wait for its next request (default 60 s); then it is closed.
    pub idle_timeout_ms: u64,
    /// How long a shutdown lets requests in flight finish (default 10 s); then the remaining
    /// connections are closed.
    pub shutdown_grace_ms: u64,
    /// Largest request head, start line and header fields (default 64 KiB); above it, or
    /// above 100 fields, 431 `header_too_large`.
    pub header_bytes_max: usize,
    /// Longest request URI, path and query (default 8 KiB); above it, 414 `uri_too_long`.
    pub uri_bytes_max: usize,
}

impl Default for ServiceConfig {
    fn default() -> ServiceConfig {
        ServiceConfig {
            body_bytes_max: 1 << 20,
            batch_commands_max: 1000,
            page_events_max: 1000,
            streams_max: 256,
            streams_per_shop_max: 64,
            streams_per_token_max: 32,
            views_wait_ms: 5000,
            connections_max: 10_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            shutdown_grace_ms: 10_000,
            header_bytes_max: 64 << 10,
            uri_bytes_max: 8 << 10,
        }
    }
}

/// What the service counts.
#[derive(Debug)]
pub struct Metrics {
    /// Commands by kind and outcome.
    pub commands: CounterFamily,
    /// Time from a command request's arrival to its answer.
    pub command_latency_s: Histogram,
}

/// The service's shared state.
pub struct App {
    engine: Arc<Engine>,
    tokens: Tokens,
    config: ServiceConfig,
    metrics: Metrics,
    streams: Arc<Semaphore>,
    stream_counts: Arc<std::sync::Mutex<feed::StreamCounts>>,
    stopping: watch::Sender<bool>,
}

impl App {
    /// A service over `engine`.
    pub fn new(engine: Arc<Engine>, tokens: Tokens, config: ServiceConfig) -> Arc<App> {
        assert!(config.body_bytes_max > 0 && config.batch_commands_max > 0 && config.page_events_max > 0);
        Arc::new(App {
            engine,
            streams: Arc::new(Semaphore::new(config.streams_max)),
            stream_counts: Arc::default(),
            tokens,
            config,
            metrics: Metrics {
                commands: CounterFamily::default(),
                command_latency_s: Histogram::new(LATENCY_BOUNDS_S),
            },
            stopping: watch::channel(false).0,
        })
    }

    /// The service's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn authorize(&self, headers: &HeaderMap, access: Access) -> Result<Principal, ApiError> {
        self.tokens.authorize(headers, access)
    }
}

type AppState = State<Arc<App>>;

/// Path parameters, or why they could not be read.
type Params = Result<Path<Vec<(String, String)>>, axum::extract::rejection::PathRejection>;

/// The shop named by the path, and the other parameters.
fn shop_and_params(params: Params) -> Result<(ShopId, Vec<(String, String)>), ApiError> {
    let Path(mut params) =
        params.map_err(|e| ApiError::bad_request("invalid_path", error::sentence(&e.body_text())))?;
    let index = params.iter().position(|(name, _)| name == "shop");
    let Some(index) = index else { return Err(ApiError::bad_request("invalid_path", "The path names no shop.")) };
    let (_, shop) = params.remove(index);
    let shop = ShopId::new(&shop).map_err(|reason| {
        ApiError::bad_request("invalid_shop", error::sentence(&format!("invalid shop id: {reason}")))
    })?;
    Ok((shop, params))
}

/// Reads a body of at most `limit` bytes: 413 above it.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("The request body is larger than {limit} bytes."),
        )
        .with_details(serde_json::json!({"limit_bytes": limit}))
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    if declared.is_some_and(|length: u64| length > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|_| too_large())
}

/// Builds the router: every route of the API.
///
/// A shop's routes are each registered under `/v1/shops/{shop}` in full rather than nested:
/// a nested router strips the prefix from every request's URI, about 2% of the server's time
/// in a profile of a promotion-day run.
pub fn router(app: Arc<App>) -> Router {
    let in_shop = |path: &str| format!("/v1/shops/{{shop}}{path}");
    let mut router: Router<Arc<App>> = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/shops", get(queries::shops))
        .route("/v1/shops/{shop}", put(create_shop));
    for route in table::ROUTES {
        // The request whole, not `HeaderMap` and `Body`: that extractor copies every header.
        let handler = move |state: AppState, params: Params, request: axum::extract::Request| {
            let (parts, body) = request.into_parts();
            commands::single(state, route, params, parts.headers, body)
        };
        let method_router: MethodRouter<Arc<App>> = match route.method {
            table::Verb::Post => axum::routing::post(handler),
            table::Verb::Delete => axum::routing::delete(handler),
        };
        router = router.route(&in_shop(route.path), method_router);
    }
    let others = [
        ("/commands", axum::routing::post(commands::batch)),
        ("/orders/{order_id}", get(queries::order)),
        ("/orders/{order_id}/history", get(queries::history)),
        ("/stock", get(queries::stock_levels)),
        ("/stock/{sku}", get(queries::stock)),
        ("/ledger/trial-balance", get(queries::trial_balance)),
        ("/ledger/journal", get(queries::journal)),
        ("/analytics/summary", get(queries::summary)),
        ("/analytics/series", get(queries::series)),
        ("/customers/{customer_id}", get(queries::customer)),
        ("/events", get(feed::page)),
        ("/events/stream", get(feed::stream)),
        ("/verify", get(audit::verify)),
    ];
    for (path, method_router) in others {
        router = router.route(&in_shop(path), method_router);
    }
    router.fallback(any(not_found)).method_not_allowed_fallback(method_not_allowed).with_state(app)
}

/// Serves `app` on `listener` with the limits of its [`ServiceConfig`] until `shutdown`
/// completes, then stops accepting, ends the event streams, waits for the requests in
/// flight for up to `shutdown_grace_ms` and closes the remaining connections ([`server`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = app.stopping.clone();
    let config = app.config.clone();
    let router = router(app);
    server::run(listener, router, &config, async move {
        shutdown.await;
        stopping.send_replace(true);
    })
    .await
}

/// `GET /healthz`: 200 `{"status": "ok", ...}` when every shop serves; 503 `{"status":
/// "degraded", ...}` when one heals after a store failure or is quarantined. `counts` has
/// the number of shops `serving`, `healing` and `quarantined`; `shops` names the shops the
/// caller may use, each `{"status": "serving"}`, `{"status": "healing", "reason", "since"
/// (engine time, ms since the epoch), "last_attempt" (why the last attempt to heal failed,
/// or null)}` or `{"status": "quarantined", "reason"}`. A caller without a valid token,
/// where tokens are configured, gets the counts and no shop's name.
async fn healthz(State(app): AppState, headers: HeaderMap) -> Response {
    use crate::engine::ShopHealth;
    let caller = app.authorize(&headers, Access::Read).ok();
    let mut counts = serde_json::json!({"serving": 0, "healing": 0, "quarantined": 0});
    let mut shops = serde_json::Map::new();
    for (shop, health) in app.engine.health() {
        let entry = match health {
            ShopHealth::Serving => serde_json::json!({"status": "serving"}),
            ShopHealth::Healing { reason, since, last_attempt } => {
                serde_json::json!({"status": "healing", "reason": reason, "since": since.0, "last_attempt": last_attempt})
            }
            ShopHealth::Quarantined { reason } => serde_json::json!({"status": "quarantined", "reason": reason}),
        };
        if let Some(word) = entry["status"].as_str() {
            counts[word] = (counts[word].as_u64().unwrap_or(0) + 1).into();
        }
        if caller.as_ref().is_some_and(|caller| caller.shops.allows(&shop)) {
            shops.insert(shop.as_str().to_owned(), entry);
        }
    }
    let degraded = counts["healing"] != 0 || counts["quarantined"] != 0;
    let (status, word) = if degraded { (StatusCode::SERVICE_UNAVAILABLE, "degraded") } else { (StatusCode::OK, "ok") };
    (status, axum::Json(serde_json::json!({"status": word, "counts": counts, "shops": shops}))).into_response()
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("There is no route {method} {}.", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}.", uri.path()),
    )
}

async fn create_shop(State(app): AppState, params: Params, headers: HeaderMap) -> Result<Response, ApiError> {
    let principal = app.authorize(&headers, Access::Admin)?;
    let (shop, _) = shop_and_params(params)?;
    principal.may_use(&shop)?;
    let existed = app.engine.shops().contains(&shop);
    app.engine.create_shop(&shop).await.map_err(ApiError::from_open)?;
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, axum::Json(serde_json::json!({"shop": shop.as_str()}))).into_response())
}

async fn metrics(State(app): AppState, headers: HeaderMap) -> Result<Response, ApiError> {
    // Its lines name every shop.
    app.authorize(&headers, Access::Read)?.may_use_all()?;
    use std::fmt::Write as _;
    let mut out = String::new();
    out += "# HELP emporium_commands_total Commands answered, by kind and outcome.\n";
    out += "# TYPE emporium_commands_total counter\n";
    app.metrics.commands.render(&mut out, "emporium_commands_total", &["kind", "outcome"]);
    out += "# HELP emporium_command_latency_seconds Time from a command request to its answer.\n";
    out += "# TYPE emporium_command_latency_seconds histogram\n";
    app.metrics.command_latency_s.render(&mut out, "emporium_command_latency_seconds", "");
    let stats = app.engine.stats();
    out += "# HELP emporium_group_commit_commands Commands per group commit.\n";
    out += "# TYPE emporium_group_commit_commands histogram\n";
    stats.batch_commands.render(&mut out, "emporium_group_commit_commands", "");
    out += "# HELP emporium_group_commit_events Events per group commit.\n";
    out += "# TYPE emporium_group_commit_events histogram\n";
    stats.batch_events.render(&mut out, "emporium_group_commit_events", "");
    out += "# HELP emporium_group_commit_seconds Time from handing a group commit to the store to its being durable.\n";
    out += "# TYPE emporium_group_commit_seconds histogram\n";
    stats.group_commit_s.render(&mut out, "emporium_group_commit_seconds", "");
    let progress = app.engine.progress();
    out += "# HELP emporium_log_position The last durable position of each shop's log.\n";
    out += "# TYPE emporium_log_position gauge\n";
    for shop in &progress {
        let _ = writeln!(out, "emporium_log_position{{shop=\"{}\"}} {}", shop.shop, shop.log_position);
    }
    out += "# HELP emporium_projection_lag_events Events each shop's views are behind its log.\n";
    out += "# TYPE emporium_projection_lag_events gauge\n";
    for shop in &progress {
        let lag = shop.log_position.saturating_sub(shop.views_position);
        let _ = writeln!(out, "emporium_projection_lag_events{{shop=\"{}\"}} {lag}", shop.shop);
    }
    out += "# HELP emporium_orders_spilled Orders each shop's writer keeps out of memory, in its spill file.\n";
    out += "# TYPE emporium_orders_spilled gauge\n";
    for shop in &progress {
        let _ = writeln!(out, "emporium_orders_spilled{{shop=\"{}\"}} {}", shop.shop, shop.orders_spilled);
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response())
}

/// Records a command's outcome and latency.
fn record(app: &App, kind: &str, outcome: &str, started: Instant) {
    app.metrics.commands.increment(&[kind, outcome]);
    app.metrics.command_latency_s.record(started.elapsed().as_secs_f64());
}
