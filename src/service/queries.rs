//! Reads. Orders come from the engine's own state, so they show every command answered so
//! far; stock, the ledger, analytics, customers and where an order's events are (its
//! history, read back from the log) come from the views, which a read first lets catch up
//! with the log's end (for at most `views_wait_ms`). Every log or view answer says the
//! position it is as of.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::error::{ApiError, sentence};
use super::{Access, App, AppState, Params, shop_and_params};
use crate::domain::ids::{CustomerId, OrderId, ShopId, Sku, Timestamp};
use crate::log::record::{Corruption, Envelope};
use crate::log::store::{EventStore, StoreError};
use crate::views::{Bucket, HOUR_MS, LATE_SHIPMENT_MS_DEFAULT, SLOW_MOVER_DAYS_DEFAULT, TimelineEntry, Views};

/// Most buckets in one series.
pub const SERIES_BUCKETS_MAX: usize = 1000;

/// Most journal entries in one page.
pub const JOURNAL_PAGE_MAX: usize = 1000;

pub(super) fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(query)| query)
        .map_err(|e| ApiError::bad_request("invalid_query", sentence(&e.body_text())))
}

fn not_found(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, code, message)
}

/// The caller may read the shop; the shop and the other path parameters.
fn reader(app: &App, headers: &HeaderMap, params: Params) -> Result<(ShopId, Vec<(String, String)>), ApiError> {
    let principal = app.authorize(headers, Access::Read)?;
    let (shop, params) = shop_and_params(params)?;
    principal.may_use(&shop)?;
    Ok((shop, params))
}

fn param<'p>(params: &'p [(String, String)], name: &str) -> &'p str {
    params.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str())
}

/// Where the shop's log ends now.
async fn log_end(app: &App, shop: &ShopId) -> Result<u64, ApiError> {
    match app.engine.store().last_position(shop).await {
        Ok(end) => Ok(end),
        Err(_) if !app.engine.shops().contains(shop) => {
            Err(ApiError::from(crate::engine::CommandError::UnknownShop(shop.clone())))
        }
        Err(error) => Err(ApiError::storage(error)),
    }
}

/// Runs `read` on the shop's views once they reached the log's end as of now.
async fn with_views<R>(app: &App, shop: &ShopId, read: impl FnOnce(&Views) -> R) -> Result<R, ApiError> {
    let end = log_end(app, shop).await?;
    let wait = Duration::from_millis(app.config.views_wait_ms);
    app.engine.views_reach(shop, end, wait).await?;
    Ok(app.engine.views(shop, read)?)
}

/// `GET /v1/shops`: the shops the token may use.
pub async fn shops(State(app): AppState, headers: HeaderMap) -> Result<Response, ApiError> {
    let principal = app.authorize(&headers, Access::Read)?;
    let shops: Vec<String> =
        app.engine.shops().iter().filter(|shop| principal.shops.allows(shop)).map(|s| s.as_str().to_owned()).collect();
    Ok(axum::Json(json!({ "shops": shops })).into_response())
}

/// `GET /orders/{order_id}`: the order as the engine knows it now.
pub async fn order(State(app): AppState, params: Params, headers: HeaderMap) -> Result<Response, ApiError> {
    let (shop, params) = reader(&app, &headers, params)?;
    let order_id = OrderId::from(param(&params, "order_id"));
    order_id.check().map_err(|r| ApiError::from_rejection(&r))?;
    let id = order_id.clone();
    let order = app
        .engine
        .read(&shop, move |state| {
            // Not `State::order`: an order not changed for a while may be in the spill.
            let order = state.order(&id).map_err(|error| error.to_string())?;
            Ok::<_, String>(order.map(|order| {
                let mut value = serde_json::to_value(&*order).unwrap_or(Value::Null);
                if let Value::Object(fields) = &mut value {
                    fields.insert("status".to_owned(), json!(order.status()));
                    fields.insert("paid".to_owned(), json!(order.paid()));
                    fields.insert("amount_due".to_owned(), json!(order.amount_due()));
                    fields.insert("refundable".to_owned(), json!(order.refundable()));
                    fields.insert("return_state".to_owned(), json!(order.return_state()));
                    fields.insert("refund_state".to_owned(), json!(order.refund_state()));
                }
                value
            }))
        })
        .await?
        .map_err(ApiError::storage)?;
    let order = order.ok_or_else(|| not_found("unknown_order", format!("Order {order_id} is unknown.")))?;
    Ok(axum::Json(order).into_response())
}

/// Most positions between two of a history's events that one read of the log spans.
const HISTORY_READ_GAP_MAX: u64 = 64;

/// The events at `positions` (increasing), oldest first: a run of positions close together
/// ([`HISTORY_READ_GAP_MAX`]) is one read of the log, so a page reads at most its events
/// and their gaps, never a chunk per event. A position the log does not hold is an error:
/// the positions came from the log.
async fn read_sparse(store: &dyn EventStore, shop: &ShopId, positions: &[u64]) -> Result<Vec<Envelope>, StoreError> {
    let mut events = Vec::with_capacity(positions.len());
    let mut rest = positions;
    while let Some(&first) = rest.first() {
        let run = 1 + rest.windows(2).take_while(|pair| pair[1] - pair[0] <= HISTORY_READ_GAP_MAX).count();
        let (wanted, later) = rest.split_at(run);
        let span = usize::try_from(wanted[run - 1] - first + 1).unwrap_or(usize::MAX);
        let read = store.read_from(shop, first.saturating_sub(1), span).await?;
        events.extend(read.into_iter().filter(|envelope| wanted.binary_search(&envelope.position).is_ok()));
        rest = later;
    }
    let found: Vec<u64> = events.iter().map(|envelope| envelope.position).collect();
    if found != positions {
        let missing = positions.iter().find(|position| !found.contains(position)).copied().unwrap_or(0);
        let reason = "no event at a position a view recorded".to_owned();
        return Err(StoreError::Corrupt { shop: shop.clone(), corruption: Corruption { position: missing, reason } });
    }
    Ok(events)
}

/// Most entries in one page of an order's history.
pub const HISTORY_PAGE_MAX: usize = 1000;

/// `GET /orders/{order_id}/history?after=N&limit=M`: a page of the order's timeline as of
/// the views' position, at most M entries (100 by default, at most [`HISTORY_PAGE_MAX`])
/// after log position N. `next_after` is the position of the page's last entry, to pass as
/// `after` for the next page (`after` again when the page is empty), and `more` says whether
/// one follows. The views keep where its events are, and the page's events are read back
/// from the log on a blocking thread, never on the runtime's workers: the work a request
/// does is one pass over the order's positions and at most M reads of the log.
pub async fn history(State(app): AppState, params: Params, headers: HeaderMap, uri: Uri) -> Result<Response, ApiError> {
    let (shop, params) = reader(&app, &headers, params)?;
    let order_id = OrderId::from(param(&params, "order_id"));
    order_id.check().map_err(|r| ApiError::from_rejection(&r))?;
    let PageQuery { after, limit } = query(&uri)?;
    let limit = page_limit(limit, HISTORY_PAGE_MAX)?;
    let end = log_end(&app, &shop).await?;
    app.engine.views_reach(&shop, end, Duration::from_millis(app.config.views_wait_ms)).await?;
    let (engine, id, runtime) = (app.engine.clone(), order_id.clone(), tokio::runtime::Handle::current());
    let read = tokio::task::spawn_blocking(move || {
        let (at, page) =
            engine.views(&shop, |views| (views.checkpoint(), views.histories.projection().page(&id, after, limit)))?;
        let Some(page) = page else { return Ok(None) };
        let events = runtime.block_on(read_sparse(engine.store().as_ref(), &shop, &page.positions));
        let entries: Vec<TimelineEntry> = events.map_err(ApiError::storage)?.iter().map(TimelineEntry::of).collect();
        Ok::<_, ApiError>(Some((at, entries, page.more)))
    });
    let read = read.await.map_err(ApiError::storage)?;
    let (at, history, more) =
        read?.ok_or_else(|| not_found("unknown_order", format!("Order {order_id} is unknown.")))?;
    let next_after = history.last().map_or(after, |entry| entry.position);
    let body = json!({"order_id": order_id.as_str(), "as_of_position": at, "history": history,
        "next_after": next_after, "more": more});
    Ok(axum::Json(body).into_response())
}

/// `GET /stock/{sku}`.
pub async fn stock(State(app): AppState, params: Params, headers: HeaderMap) -> Result<Response, ApiError> {
    let (shop, params) = reader(&app, &headers, params)?;
    let sku = Sku::from(param(&params, "sku"));
    sku.check().map_err(|r| ApiError::from_rejection(&r))?;
    let (at, level) = with_views(&app, &shop, |views| {
        (views.checkpoint(), views.shop.projection().stock(&sku, SLOW_MOVER_DAYS_DEFAULT))
    })
    .await?;
    let level = level.ok_or_else(|| not_found("unknown_sku", format!("SKU {sku} is unknown.")))?;
    Ok(axum::Json(json!({"as_of_position": at, "stock": level})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StockQuery {
    #[serde(default)]
    low: Option<bool>,
}

/// `GET /stock?low=true`: every SKU's stock, or only the low ones.
pub async fn stock_levels(
    State(app): AppState,
    params: Params,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (shop, _) = reader(&app, &headers, params)?;
    let StockQuery { low } = query(&uri)?;
    let (at, levels) = with_views(&app, &shop, |views| {
        let levels = views.shop.projection().stock_levels(SLOW_MOVER_DAYS_DEFAULT);
        let levels: Vec<_> = levels.into_iter().filter(|l| low.is_none_or(|low| l.low_stock == low)).collect();
        (views.checkpoint(), levels)
    })
    .await?;
    Ok(axum::Json(json!({"as_of_position": at, "stock": levels})).into_response())
}

/// `GET /ledger/trial-balance`.
pub async fn trial_balance(State(app): AppState, params: Params, headers: HeaderMap) -> Result<Response, ApiError> {
    let (shop, _) = reader(&app, &headers, params)?;
    let (at, balances) =
        with_views(&app, &shop, |views| (views.checkpoint(), views.ledger.projection().trial_balance())).await?;
    let total: rust_decimal::Decimal = balances.iter().map(|(_, balance)| *balance).sum();
    let accounts: Vec<Value> = balances
        .iter()
        .map(|(account, balance)| json!({"account": account, "name": account.name(), "balance": balance}))
        .collect();
    Ok(axum::Json(json!({"as_of_position": at, "accounts": accounts, "total": total})).into_response())
}

/// `?after=N&limit=M` of a paged read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PageQuery {
    #[serde(default)]
    pub(super) after: u64,
    #[serde(default)]
    pub(super) limit: Option<usize>,
}

/// The page size asked for: 100 (or `max`, if smaller) by default, else 1 to `max`.
pub(super) fn page_limit(limit: Option<usize>, max: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(100.min(max)),
        Some(limit) if (1..=max).contains(&limit) => Ok(limit),
        Some(limit) => {
            Err(ApiError::bad_request("invalid_query", format!("The limit must be 1 to {max}, not {limit}."))
                .with_details(json!({"limit_max": max})))
        }
    }
}

/// `GET /ledger/journal?after=N&limit=M`.
pub async fn journal(State(app): AppState, params: Params, headers: HeaderMap, uri: Uri) -> Result<Response, ApiError> {
    let (shop, _) = reader(&app, &headers, params)?;
    let PageQuery { after, limit } = query(&uri)?;
    let limit = page_limit(limit, JOURNAL_PAGE_MAX)?;
    let (at, entries) =
        with_views(&app, &shop, |views| (views.checkpoint(), views.ledger.projection().journal_after(after, limit)))
            .await?;
    let entries = entries.map_err(ApiError::storage)?;
    Ok(axum::Json(json!({"as_of_position": at, "entries": entries})).into_response())
}

/// A time in a query: milliseconds since the epoch or RFC 3339.
fn time(text: Option<&str>, name: &str) -> Result<Option<Timestamp>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(Some(Timestamp(ms)));
    }
    let parsed = humantime::parse_rfc3339_weak(text).ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    match parsed {
        Some(since) => Ok(Some(Timestamp(u64::try_from(since.as_millis()).unwrap_or(u64::MAX)))),
        None => Err(ApiError::bad_request(
            "invalid_query",
            format!("{name} must be milliseconds since the epoch or an RFC 3339 time such as 2026-11-11T00:00:00Z."),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
    #[serde(default)]
    bucket: Option<Bucket>,
}

/// The range asked for; by default the `span_ms` up to the end of the current hour (figures
/// are kept by the hour, so a range covers whole hours).
fn range(query: &RangeQuery, now: Timestamp, span_ms: u64) -> Result<(Timestamp, Timestamp), ApiError> {
    let hour_end = (now.0 / HOUR_MS).saturating_add(1).saturating_mul(HOUR_MS);
    let to = time(query.to.as_deref(), "to")?.unwrap_or(Timestamp(hour_end));
    let from = time(query.from.as_deref(), "from")?.unwrap_or(Timestamp(to.0.saturating_sub(span_ms)));
    if from > to {
        return Err(ApiError::bad_request("invalid_query", "from must not be after to."));
    }
    Ok((from, to))
}

/// `GET /analytics/summary?from=&to=`: every figure of the range (all time by default).
pub async fn summary(State(app): AppState, params: Params, headers: HeaderMap, uri: Uri) -> Result<Response, ApiError> {
    let (shop, _) = reader(&app, &headers, params)?;
    let range_query: RangeQuery = query(&uri)?;
    if range_query.bucket.is_some() {
        return Err(ApiError::bad_request("invalid_query", "A summary takes from and to, not bucket."));
    }
    let (at, summary) = with_views(&app, &shop, |views| {
        let now = views.shop.projection().now();
        range(&range_query, now, u64::MAX).map(|(from, to)| {
            (views.checkpoint(), views.analytics.projection().summary(from, to, LATE_SHIPMENT_MS_DEFAULT))
        })
    })
    .await??;
    Ok(axum::Json(json!({"as_of_position": at, "summary": summary})).into_response())
}

/// `GET /analytics/series?bucket=hour|day&from=&to=`: the last 24 buckets by default.
pub async fn series(State(app): AppState, params: Params, headers: HeaderMap, uri: Uri) -> Result<Response, ApiError> {
    let (shop, _) = reader(&app, &headers, params)?;
    let range_query: RangeQuery = query(&uri)?;
    let bucket = range_query.bucket.unwrap_or(Bucket::Hour);
    let (at, series) = with_views(&app, &shop, |views| {
        let now = views.shop.projection().now();
        let (from, to) = range(&range_query, now, 24 * bucket.ms())?;
        let end_max = bucket.series_end_max();
        if to > end_max {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("A series ends at most at {} ms, the end of the last whole bucket; to is {}.", end_max.0, to.0),
            )
            .with_details(json!({"to_max": end_max.0})));
        }
        let buckets = (to.0 - from.0).div_ceil(bucket.ms());
        if buckets > SERIES_BUCKETS_MAX as u64 {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("A series has at most {SERIES_BUCKETS_MAX} buckets; this range has {buckets}."),
            ));
        }
        let analytics = views.analytics.projection();
        Ok((views.checkpoint(), analytics.series(bucket, from, to, LATE_SHIPMENT_MS_DEFAULT, SERIES_BUCKETS_MAX)))
    })
    .await??;
    Ok(axum::Json(json!({"as_of_position": at, "bucket": bucket, "series": series})).into_response())
}

/// `GET /customers/{customer_id}`.
pub async fn customer(State(app): AppState, params: Params, headers: HeaderMap) -> Result<Response, ApiError> {
    let (shop, params) = reader(&app, &headers, params)?;
    let customer_id = CustomerId::from(param(&params, "customer_id"));
    customer_id.check().map_err(|r| ApiError::from_rejection(&r))?;
    let (at, stats) = with_views(&app, &shop, |views| {
        let stats = views.customers.projection().customer(&customer_id).cloned();
        (views.checkpoint(), stats.map(|s| (s.repeat_buyer(), s)))
    })
    .await?;
    let (repeat, stats) =
        stats.ok_or_else(|| not_found("unknown_customer", format!("Customer {customer_id} is unknown.")))?;
    let body =
        json!({"as_of_position": at, "customer_id": customer_id.as_str(), "repeat_buyer": repeat, "stats": stats});
    Ok(axum::Json(body).into_response())
}
