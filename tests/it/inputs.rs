//! Hostile and heavy inputs: an order's history read in pages, refusals remembered within a
//! bound, tokens scoped to shops with event streams capped per shop and per token, and the
//! smaller inputs that used to be misread (repeated JSON keys, a repeated Idempotency-Key, a
//! series near the end of time).

use std::sync::Arc;
use std::time::{Duration, Instant};

use emporium::engine::{CommandError, Engine, EngineConfig, ManualClock, Request};
use emporium::log::store::{EventStore, SledStore};
use emporium::{CommandId, ShopId, rehearsal::demo};
use rust_decimal::dec;
use serde_json::{Value, json};

use crate::http::{ADMIN, Client, Follower, OPERATOR, Response, Server};
use crate::support::{pay, temp_dir};

const SHOP: &str = "/v1/shops/main";

fn post(client: &Client, path: &str, body: &str) -> Response {
    client.send("POST", path, &[("content-type", "application/json")], body.as_bytes())
}

fn log_end(client: &Client, shop: &str) -> u64 {
    let page = client.get(&format!("/v1/shops/{shop}/events?after=0&limit=1000")).json();
    page["next_after"].as_u64().expect("next_after")
}

/// An answer is an error of the documented shape with this status and code.
fn assert_error(response: &Response, status: u16, code: &str, what: &str) {
    let body = response.json();
    assert_eq!((response.status, body["error"]["code"].as_str()), (status, Some(code)), "{what}: {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {body}");
    assert!(body["error"]["details"].is_object(), "{what}: {body}");
}

/// Defect 5: an order's history is read in pages: `after` and `limit`, the cursor of the
/// next page and whether there is one; bad values are 400 with the error shape.
#[test]
fn an_order_history_is_read_in_pages_with_after_and_limit() {
    let dir = temp_dir();
    let server = Server::start(&dir.path().join("data"), false);
    let client = server.client();
    let parcels = 40;
    let setup = [
        (
            format!("{SHOP}/products"),
            r#"{"sku": "P-1", "title": "Pin", "category": "misc", "price": "1.00", "weight_g": 1,
            "low_stock_threshold": 0}"#
                .to_owned(),
        ),
        (
            format!("{SHOP}/products/P-1/receipts"),
            r#"{"quantity": 100, "unit_cost": "0.50", "supplier_ref": "PO"}"#.to_owned(),
        ),
        (
            format!("{SHOP}/orders"),
            format!(
                r#"{{"order_id": "O-1", "customer_id": "C", "region": "r", "lines": [{{"sku": "P-1", "quantity": {parcels}}}]}}"#
            ),
        ),
        (format!("{SHOP}/orders/O-1/payments"), format!(r#"{{"payment_id": "PAY-1", "amount": "{parcels}.00"}}"#)),
    ];
    for (path, body) in &setup {
        let response = post(&client, path, body);
        assert!(matches!(response.status, 200 | 201), "{path}: {}", response.json());
    }
    for n in 0..parcels {
        let body = format!(
            r#"{{"shipment_id": "S-{n}", "carrier": "SF", "tracking_number": "T{n}", "lines": [{{"sku": "P-1", "quantity": 1}}]}}"#
        );
        let response = post(&client, &format!("{SHOP}/orders/O-1/shipments"), &body);
        assert!(matches!(response.status, 200 | 201), "parcel {n}: {}", response.json());
    }
    let history = |query: &str| client.get(&format!("{SHOP}/orders/O-1/history{query}"));
    let whole = history("?limit=1000").json();
    let whole: Vec<Value> = whole["history"].as_array().expect("history").clone();
    assert!(whole.len() >= 2 + parcels, "placed, paid and every parcel: {}", whole.len());
    assert_eq!(history("").json()["history"].as_array().map(Vec::len), Some(whole.len().min(100)), "100 by default");

    // Page by page, 7 at a time, from the cursor each page gives.
    let (mut after, mut paged, mut pages) = (0, Vec::new(), 0);
    loop {
        let page = history(&format!("?after={after}&limit=7"));
        assert_eq!(page.status, 200, "{}", page.json());
        let page = page.json();
        let entries = page["history"].as_array().expect("history").clone();
        assert!(entries.len() <= 7, "a page holds at most its limit");
        pages += 1;
        paged.extend(entries.iter().cloned());
        let more = page["more"].as_bool().expect("more");
        let next = page["next_after"].as_u64().expect("next_after");
        assert_eq!(Some(next), entries.last().map_or(Some(after), |e| e["position"].as_u64()));
        after = next;
        if !more {
            break;
        }
        assert_eq!(entries.len(), 7, "only the last page is short");
        assert!(pages < 100, "paging ends");
    }
    assert_eq!(paged, whole, "the pages are the history, each entry once, in order");
    assert_eq!(pages, whole.len().div_ceil(7));
    let last = history(&format!("?after={after}")).json();
    assert_eq!((last["history"].as_array().map(Vec::len), last["more"].as_bool()), (Some(0), Some(false)));

    for (query, what) in [
        ("?limit=0", "a zero limit"),
        ("?limit=1001", "a limit over the maximum"),
        ("?limit=-1", "a negative limit"),
        ("?after=-1", "a negative cursor"),
        ("?after=abc", "a word for a cursor"),
        ("?after=18446744073709551616", "a cursor over u64"),
        ("?page=2", "an unknown parameter"),
    ] {
        assert_error(&history(query), 400, "invalid_query", what);
    }
}

/// Defect 10: a key repeated in a body, a repeated Idempotency-Key and a series near
/// u64::MAX are refused with the error shape, and append nothing.
#[test]
fn repeated_keys_repeated_idempotency_keys_and_series_at_the_end_of_time_are_refused() {
    let dir = temp_dir();
    let server = Server::start(&dir.path().join("data"), false);
    let client = server.client();
    let product = r#"{"sku": "T-1", "title": "Tea", "category": "tea", "price": "2.00", "weight_g": 1,
        "low_stock_threshold": 0}"#;
    assert_eq!(post(&client, &format!("{SHOP}/products"), product).status, 201);
    let receipt = r#"{"quantity": 10, "unit_cost": "1.00", "supplier_ref": "PO"}"#;
    assert_eq!(post(&client, &format!("{SHOP}/products/T-1/receipts"), receipt).status, 200);
    let end = log_end(&client, "main");

    let order = r#"{"order_id": "O-1", "customer_id": "C", "region": "r",
        "lines": [{"sku": "T-1", "quantity": 1, "quantity": 5}]}"#;
    assert_error(&post(&client, &format!("{SHOP}/orders"), order), 400, "duplicate_key", "a repeated quantity");
    let top = r#"{"order_id": "O-1", "order_id": "O-2", "customer_id": "C", "region": "r",
        "lines": [{"sku": "T-1", "quantity": 1}]}"#;
    assert_error(&post(&client, &format!("{SHOP}/orders"), top), 400, "duplicate_key", "a repeated order id");
    let batch = r#"{"commands": [{"type": "place_order", "order_id": "O-1", "customer_id": "C", "region": "r",
        "lines": [{"sku": "T-1", "quantity": 1, "quantity": 5}]}]}"#;
    assert_error(&post(&client, &format!("{SHOP}/commands"), batch), 400, "duplicate_key", "in a batch item");
    let twice = r#"{"commands": [], "commands": [{"type": "delist_product", "sku": "T-1"}]}"#;
    assert_error(&post(&client, &format!("{SHOP}/commands"), twice), 400, "duplicate_key", "a repeated batch");

    let keyed = client.send(
        "POST",
        &format!("{SHOP}/orders"),
        &[("content-type", "application/json"), ("idempotency-key", "k-1"), ("idempotency-key", "k-2")],
        br#"{"order_id": "O-1", "customer_id": "C", "region": "r", "lines": [{"sku": "T-1", "quantity": 1}]}"#,
    );
    assert_error(&keyed, 400, "invalid_idempotency_key", "a repeated Idempotency-Key");
    assert_eq!(log_end(&client, "main"), end, "nothing appended");

    let max = u64::MAX;
    for (query, what) in [
        (format!("?bucket=hour&from={}&to={max}", max - 5), "the last milliseconds"),
        (format!("?bucket=day&from={}&to={}", max - 3_600_000, max - 1), "the last hour, by day"),
        (format!("?to={max}"), "to at the end of time"),
    ] {
        let response = client.get(&format!("{SHOP}/analytics/series{query}"));
        assert_error(&response, 400, "invalid_query", what);
    }
    let fine = client.get(&format!("{SHOP}/analytics/series?bucket=day&from=0&to=86400000")).json();
    assert_eq!(fine["series"].as_array().map(Vec::len), Some(1), "{fine}");
}

/// Defect 6: a flood of distinct refused commands is remembered up to the bound, oldest
/// forgotten first, in memory and in the store; a refusal within the bound is answered the
/// same after a restart, and one beyond it runs as a new command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_remembered_up_to_the_bound_oldest_forgotten_first() {
    const BOUND: usize = 1_000;
    const REFUSALS: usize = 5_000;
    const WAVE: usize = 100;
    let dir = temp_dir();
    let shop = ShopId::main();
    let clock = Arc::new(ManualClock::new(demo::DAY_START));
    let config = EngineConfig { remembered_refusals_max: BOUND, ..EngineConfig::default() };
    let open = |clock: Arc<ManualClock>| {
        let (path, config) = (dir.path().to_path_buf(), config.clone());
        async move {
            let store: Arc<dyn EventStore> = Arc::new(SledStore::open(&path).expect("opens"));
            let engine = Engine::open(store.clone(), clock, config).await.expect("opens");
            (Arc::new(engine), store)
        }
    };
    let (engine, store) = open(clock.clone()).await;
    engine.create_shop(&shop).await.expect("created");
    let id = |n: usize| CommandId::new(&format!("refused-{n}")).expect("an id");
    let refused = |n: usize| Request::new("tester", pay("O-404", dec!(1.00))).with_id(id(n));
    let other = |n: usize| Request::new("tester", pay("O-405", dec!(1.00))).with_id(id(n));
    // In waves, so that the newest BOUND are exactly the last BOUND ids.
    for wave in 0..REFUSALS / WAVE {
        let answers =
            futures_util::future::join_all((wave * WAVE..(wave + 1) * WAVE).map(|n| engine.execute(&shop, refused(n))))
                .await;
        assert!(answers.iter().all(|a| matches!(a, Err(CommandError::Rejected(_)))), "refused");
    }
    // Remembered: another command under the id of one of the newest BOUND is a conflict.
    for n in REFUSALS - BOUND..REFUSALS {
        let answer = engine.execute(&shop, other(n)).await;
        assert!(matches!(answer, Err(CommandError::IdempotencyConflict { .. })), "{n}: {answer:?}");
    }
    // The store forgets too, off the writer's path: it keeps at least the bound, and at most
    // an eighth more and a wave.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let stored = store.rejections(&shop).await.expect("readable").len();
        if stored <= BOUND + BOUND / 8 + WAVE || Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!((BOUND..=BOUND + BOUND / 8 + WAVE).contains(&stored), "{stored} refusals stored");
    assert_eq!(store.last_position(&shop).await, Ok(0), "a refusal appends nothing");
    Arc::into_inner(engine).expect("no other users").close().await;
    drop(store);

    let (engine, _store) = open(clock.clone()).await;
    for n in REFUSALS - BOUND..REFUSALS {
        let again = engine.execute(&shop, refused(n)).await;
        assert!(matches!(again, Err(CommandError::Rejected(_))), "{n}: {again:?}");
        let answer = engine.execute(&shop, other(n)).await;
        assert!(matches!(answer, Err(CommandError::IdempotencyConflict { .. })), "{n} after a restart: {answer:?}");
    }
    // Beyond the bound: forgotten, so another command under the id runs as a new command.
    for n in [0, 1, REFUSALS / 2, REFUSALS - BOUND - 1] {
        let answer = engine.execute(&shop, other(n)).await;
        assert!(matches!(answer, Err(CommandError::Rejected(_))), "{n} was forgotten: {answer:?}");
    }
    Arc::into_inner(engine).expect("no other users").close().await;
}

const ACME: &str = "acme-operator-token-0123456789";
const BETA: &str = "beta-operator-token-0123456789";
const ACME_ADMIN: &str = "acme-admin-token-0123456789";

/// `serve` with tokens: an admin for all shops, an operator for `acme` only, one for `beta`
/// only (in the `+` form) and an admin for `acme` only.
fn scoped_server(data: &std::path::Path) -> Server {
    let file = data.with_extension("scoped-tokens");
    let text = format!(
        "admin root {ADMIN} shops=*\noperator shop {OPERATOR}\noperator acme {ACME} shops=acme\n\
         operator beta {BETA} shops=beta+main\nadmin acme-admin {ACME_ADMIN} shops=acme\n"
    );
    std::fs::write(&file, text).expect("tokens written");
    Server::start_with(data, false, &["--tokens", file.to_str().expect("a UTF-8 path")])
}

/// Defect 8: a token uses only the shops it names: 403 on any other, existing or not;
/// `/v1/shops` lists only its shops; only admins create shops, and only their own; one
/// client holding many event streams cannot lock out the followers of another shop.
#[test]
fn tokens_use_only_their_shops_and_streams_are_capped_per_token() {
    let dir = temp_dir();
    let server = scoped_server(&dir.path().join("data"));
    let root = server.client().with_token(ADMIN);
    let (acme, beta) = (server.client().with_token(ACME), server.client().with_token(BETA));
    for shop in ["acme", "beta"] {
        assert_eq!(root.send("PUT", &format!("/v1/shops/{shop}"), &[], b"").status, 201, "{shop}");
    }
    let product = |sku: &str| {
        format!(
            r#"{{"sku": "{sku}", "title": "Tea", "category": "tea", "price": "2.00", "weight_g": 1,
            "low_stock_threshold": 0}}"#
        )
    };
    assert_eq!(post(&acme, "/v1/shops/acme/products", &product("A-1")).status, 201);
    assert_eq!(post(&beta, "/v1/shops/beta/products", &product("B-1")).status, 201);
    let beta_end = log_end(&root, "beta");
    let refused = [
        ("POST", "/v1/shops/beta/products", product("X-1")),
        ("POST", "/v1/shops/beta/products/B-1/price", r#"{"price": "0.01"}"#.to_owned()),
        ("POST", "/v1/shops/beta/commands", r#"{"commands": [{"type": "delist_product", "sku": "B-1"}]}"#.to_owned()),
        ("GET", "/v1/shops/beta/stock/B-1", String::new()),
        ("GET", "/v1/shops/beta/customers/C-1", String::new()),
        ("GET", "/v1/shops/beta/events", String::new()),
        ("GET", "/v1/shops/beta/events/stream", String::new()),
        ("GET", "/v1/shops/nowhere/stock", String::new()),
        ("GET", "/metrics", String::new()),
        ("PUT", "/v1/shops/gamma", String::new()),
    ];
    for (method, path, body) in &refused {
        let response = acme.send(method, path, &[("content-type", "application/json")], body.as_bytes());
        assert_error(&response, 403, "forbidden", &format!("acme's operator: {method} {path}"));
    }
    let acme_admin = server.client().with_token(ACME_ADMIN);
    assert_error(
        &acme_admin.send("PUT", "/v1/shops/gamma", &[], b""),
        403,
        "forbidden",
        "a scoped admin, another shop",
    );
    assert_eq!(acme_admin.send("PUT", "/v1/shops/acme", &[], b"").status, 200, "a scoped admin, its shop");
    assert_eq!(log_end(&root, "beta"), beta_end, "nothing appended to beta");
    let shops = |client: &Client| client.get("/v1/shops").json()["shops"].clone();
    assert_eq!(shops(&acme), json!(["acme"]));
    assert_eq!(shops(&beta), json!(["beta", "main"]));
    assert_eq!(shops(&root), json!(["acme", "beta", "main"]));
    assert_eq!(shops(&server.client().with_token(OPERATOR)), json!(["acme", "beta", "main"]), "no field: all");
    assert_eq!(root.get("/metrics").status, 200);
    // Health names only the shops a caller may use; without a token, none, but counts them.
    let health = |client: &Client| client.get("/healthz").json();
    assert_eq!(health(&acme)["shops"], json!({"acme": {"status": "serving"}}));
    let anonymous = health(&server.client());
    assert_eq!(anonymous["shops"], json!({}));
    assert_eq!(anonymous["counts"], json!({"serving": 3, "healing": 0, "quarantined": 0}));
    assert_eq!(health(&root)["shops"].as_object().map(|shops| shops.len()), Some(3));
    // The server's verification, too, is only for the token's shops.
    assert_error(&acme.get("/v1/shops/beta/verify"), 403, "forbidden", "acme verifying beta");
    assert_eq!(acme.get("/v1/shops/acme/verify").status, 200);

    // acme's client holds every stream its token may; beta's followers still get theirs.
    let held: Vec<Follower> = (0..32).map(|_| Follower::connect(&acme, "/v1/shops/acme/events/stream", None)).collect();
    let over = acme.get("/v1/shops/acme/events/stream");
    assert_error(&over, 503, "too_many_streams", "a 33rd stream with one token");
    assert_eq!(over.json()["error"]["details"]["scope"], "token");
    let mut follower = Follower::connect(&beta, "/v1/shops/beta/events/stream", None);
    let (position, _) = follower.next();
    assert_eq!(position, 1, "beta's follower reads beta's log");
    // Closed by the client, the streams' places are given back once the server notices,
    // when it next writes to them: an event or two of acme's wakes them.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0.. {
        assert_eq!(post(&acme, "/v1/shops/acme/products", &product(&format!("W-{n}"))).status, 201);
        let mut again = std::net::TcpStream::connect(acme.address).expect("connects");
        let request =
            format!("GET /v1/shops/acme/events/stream HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ACME}\r\n\r\n");
        std::io::Write::write_all(&mut again, request.as_bytes()).expect("written");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(again), &mut line).expect("a status line");
        if line.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "streams closed by the client are given back: {line}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
