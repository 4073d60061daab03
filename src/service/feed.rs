//! The log for other systems: pages of events, and a Server-Sent Events stream that follows
//! the log. Each SSE event's `id` is its position, so a follower that reconnects with
//! `Last-Event-ID` gets every later event exactly once, in order.
//!
//! Streams are capped three ways ([`super::ServiceConfig`]): in all, per shop and per token
//! (by the token's name), so that one client holding many streams cannot lock out the
//! followers of other shops, nor one busy shop those of the others. A stream over a cap is
//! 503 `too_many_streams` with `Retry-After`, its details naming the cap (`scope`: `server`,
//! `shop` or `token`, and `limit`).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::error::ApiError;
use super::queries::{PageQuery, page_limit, query};
use super::wire::EventLine;
use super::{Access, App, AppState, Params, shop_and_params};
use crate::domain::ids::ShopId;
use crate::engine::CommandError;
use crate::log::record::Envelope;

/// Events read from the store at a time by a follower.
const STREAM_PAGE_EVENTS: usize = 256;

/// How long a follower waits for new events before checking for shutdown again.
const STREAM_WAIT_MS: u64 = 15_000;

/// The shop of a route the caller may read, and the caller's name.
fn known_shop(app: &App, headers: &HeaderMap, params: Params) -> Result<(ShopId, String), ApiError> {
    let principal = app.authorize(headers, Access::Read)?;
    let (shop, _) = shop_and_params(params)?;
    principal.may_use(&shop)?;
    if !app.engine.shops().contains(&shop) {
        return Err(CommandError::UnknownShop(shop).into());
    }
    Ok((shop, principal.name))
}

/// The event streams open, per shop and per token name.
#[derive(Debug, Default)]
pub(super) struct StreamCounts {
    by_shop: HashMap<ShopId, usize>,
    by_token: HashMap<String, usize>,
}

/// One open stream's place in [`StreamCounts`], given back when it is dropped.
struct StreamSlot {
    counts: Arc<Mutex<StreamCounts>>,
    shop: ShopId,
    token: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let StreamCounts { by_shop, by_token } = &mut *counts;
        release(by_shop, &self.shop);
        release(by_token, &self.token);
    }
}

fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = counts.get_mut(key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(key);
        }
    }
}

fn too_many_streams(scope: &str, limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_streams",
        format!("Too many event streams are open ({limit} per {scope}); retry later."),
    )
    .with_details(json!({"scope": scope, "limit": limit}))
}

/// A place for one more stream of `shop` by `token`, within every cap.
fn open_slot(app: &App, shop: &ShopId, token: &str) -> Result<(StreamSlot, OwnedSemaphorePermit), ApiError> {
    let (shop_max, token_max) = (app.config.streams_per_shop_max, app.config.streams_per_token_max);
    let mut counts = app.stream_counts.lock().unwrap_or_else(PoisonError::into_inner);
    if counts.by_token.get(token).copied().unwrap_or(0) >= token_max {
        return Err(too_many_streams("token", token_max));
    }
    if counts.by_shop.get(shop).copied().unwrap_or(0) >= shop_max {
        return Err(too_many_streams("shop", shop_max));
    }
    let permit =
        app.streams.clone().try_acquire_owned().map_err(|_| too_many_streams("server", app.config.streams_max))?;
    *counts.by_shop.entry(shop.clone()).or_insert(0) += 1;
    *counts.by_token.entry(token.to_owned()).or_insert(0) += 1;
    let slot = StreamSlot { counts: app.stream_counts.clone(), shop: shop.clone(), token: token.to_owned() };
    Ok((slot, permit))
}

/// `GET /events?after=N&limit=M`: up to M events after position N.
pub async fn page(State(app): AppState, params: Params, headers: HeaderMap, uri: Uri) -> Result<Response, ApiError> {
    let (shop, _) = known_shop(&app, &headers, params)?;
    let PageQuery { after, limit } = query(&uri)?;
    let limit = page_limit(limit, app.config.page_events_max)?;
    let envelopes = app.engine.store().read_from(&shop, after, limit).await.map_err(ApiError::storage)?;
    let next_after = envelopes.last().map_or(after, |e| e.position);
    let events: Vec<EventLine> = envelopes.iter().map(EventLine::from).collect();
    Ok(axum::Json(json!({"events": events, "next_after": next_after})).into_response())
}

struct Follower {
    app: Arc<App>,
    shop: ShopId,
    after: u64,
    buffer: VecDeque<Envelope>,
    stopping: watch::Receiver<bool>,
    _place: (StreamSlot, OwnedSemaphorePermit),
}

impl Follower {
    /// The next event, waiting for one; `None` when the server stops or storage fails.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(envelope) = self.buffer.pop_front() {
                assert_eq!(envelope.position, self.after + 1, "a follower sees every position once, in order");
                self.after = envelope.position;
                let data = serde_json::to_string(&EventLine::from(&envelope)).ok()?;
                return Some(SseEvent::default().id(envelope.position.to_string()).data(data));
            }
            if *self.stopping.borrow() {
                return None;
            }
            let store = self.app.engine.store().clone();
            match store.read_from(&self.shop, self.after, STREAM_PAGE_EVENTS).await {
                Ok(page) if !page.is_empty() => {
                    self.buffer.extend(page);
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(shop = %self.shop, %error, "an event stream stopped");
                    return None;
                }
            }
            tokio::select! {
                _ = store.wait_for(&self.shop, self.after, Duration::from_millis(STREAM_WAIT_MS)) => {}
                changed = self.stopping.changed() => if changed.is_err() { return None },
            }
        }
    }
}

/// `GET /events/stream`: Server-Sent Events from `Last-Event-ID` (or `?after=N`) on.
pub async fn stream(State(app): AppState, params: Params, headers: HeaderMap, uri: Uri) -> Result<Response, ApiError> {
    let (shop, token) = known_shop(&app, &headers, params)?;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct StreamQuery {
        #[serde(default)]
        after: u64,
    }
    let StreamQuery { after } = query(&uri)?;
    let after = match headers.get("last-event-id") {
        None => after,
        Some(value) => value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).ok_or_else(|| {
            ApiError::bad_request("invalid_last_event_id", "Last-Event-ID must be a log position (a number).")
        })?,
    };
    let place = open_slot(&app, &shop, &token)?;
    let follower =
        Follower { stopping: app.stopping.subscribe(), app, shop, after, buffer: VecDeque::new(), _place: place };
    let events = futures_util::stream::unfold(follower, |mut follower| async move {
        follower.next().await.map(|event| (Ok::<_, Infallible>(event), follower))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}
