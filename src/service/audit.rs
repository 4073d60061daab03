//! `GET /v1/shops/{shop}/verify`: what `emporium verify` reports, from the running server,
//! which holds the store (the command refuses while it does). Any role may ask. It checks
//! every record's checksum and the hash chain from the first record, then compares the
//! log with the engine's witness of where it ended. It reads the whole log, on a blocking
//! thread, one verification at a time (others wait their turn); the answer is 200 with the
//! report, `"ok": false` when the chain is broken or the log falls short of its witness.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::{Access, AppState, Params, shop_and_params};
use crate::engine::CommandError;
use crate::engine::witness::{self, Standing};
use crate::log::store::StoreError;

/// One verification at a time: each reads the whole log.
static VERIFYING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `GET /v1/shops/{shop}/verify`.
pub async fn verify(State(app): AppState, params: Params, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = app.authorize(&headers, Access::Read)?;
    let (shop, _) = shop_and_params(params)?;
    caller.may_use(&shop)?;
    let witnessed = app.engine.witnessed(&shop);
    if witnessed.is_none() && !app.engine.shops().contains(&shop) {
        return Err(ApiError::from(CommandError::UnknownShop(shop)));
    }
    let _turn = VERIFYING.acquire().await.map_err(ApiError::storage)?;
    let store = app.engine.store().clone();
    let runtime = tokio::runtime::Handle::current();
    let checked = shop.clone();
    let report = tokio::task::spawn_blocking(move || {
        runtime.block_on(async {
            let verified = store.verify(&checked).await;
            let standing = witness::compare(store.as_ref(), &checked, witnessed).await;
            (verified, standing)
        })
    })
    .await
    .map_err(ApiError::storage)?;
    let (verified, standing) = report;
    let chain = match verified {
        Ok(report) => json!({"intact": true, "events": report.events, "head": hex(&report.head)}),
        Err(StoreError::Corrupt { corruption, .. }) => {
            json!({"intact": false, "failed_at": corruption.position, "reason": corruption.reason})
        }
        Err(error) => return Err(ApiError::storage(error)),
    };
    let standing = standing.map_err(ApiError::storage)?;
    let witness = match &standing {
        Standing::Unwitnessed => json!({"standing": "none"}),
        Standing::Agrees(w) => json!({"standing": "agrees", "position": w.position, "hash": hex(&w.hash)}),
        Standing::Shorter { witnessed, actual } => {
            json!({"standing": "shorter", "position": witnessed, "log_ends_at": actual, "message": standing.refusal()})
        }
        Standing::Differs { witnessed } => {
            json!({"standing": "differs", "position": witnessed, "message": standing.refusal()})
        }
    };
    let ok = chain["intact"] == true && standing.refusal().is_none();
    Ok(axum::Json(json!({"shop": shop.as_str(), "ok": ok, "chain": chain, "witness": witness})).into_response())
}
