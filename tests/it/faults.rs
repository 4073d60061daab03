//! Failures of the store, injected: a store that fails its Nth append (before or after
//! writing), fails with ENOSPC, fails reads, or fails a shop's creation halfway. Every
//! acknowledged command survives, the shop answers `Unavailable` while the fault lasts and
//! heals, without reopening the engine, once it clears. And through the binary: with a low
//! descriptor limit, creating shops ends with the typed refusal, never a store failure.

use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use emporium::engine::{CommandError, Engine, EngineConfig, ManualClock, OpenError, Request, ShopHealth};
use emporium::log::record::{Envelope, Hash};
use emporium::log::store::{
    AppendBatch, EventStore, MemoryStore, RejectionRecord, SledStore, StoreError, VerifyReport,
};
use emporium::{Event, ShopId};
use rust_decimal::Decimal;

use crate::http::{ADMIN, Client};
use crate::support::{all_events, at, list, place, receive, temp_dir};

const ENOSPC: &str = "No space left on device (os error 28)";

/// What the fault store does to appends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum When {
    /// Fails without writing.
    Before,
    /// Writes, then fails: a sync whose outcome is unknown.
    After,
}

#[derive(Default)]
struct Faults {
    /// The append (counted from 1) from which appends fail, and how.
    fail_from: Option<(u64, When)>,
    fail_reads: bool,
    /// Whether a shop's creation writes and then fails.
    fail_create: bool,
    /// Set by a failed append: appends are refused until healed, as a real store does.
    poisoned: bool,
}

/// A store that fails as it is told, around a real one.
struct FaultStore {
    inner: Arc<dyn EventStore>,
    faults: Mutex<Faults>,
    appends: AtomicU64,
    heals: AtomicU64,
}

impl FaultStore {
    fn new(inner: Arc<dyn EventStore>) -> Arc<FaultStore> {
        Arc::new(FaultStore { inner, faults: Mutex::default(), appends: AtomicU64::new(0), heals: AtomicU64::new(0) })
    }

    fn set(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.faults.lock().expect("unpoisoned"));
    }

    fn read_fault(&self) -> Result<(), StoreError> {
        if self.faults.lock().expect("unpoisoned").fail_reads {
            return Err(StoreError::Io("Input/output error (os error 5)".to_owned()));
        }
        Ok(())
    }

    /// Whether this append fails, and how.
    fn append_fault(&self) -> Option<When> {
        let number = self.appends.fetch_add(1, Ordering::AcqRel) + 1;
        let mut faults = self.faults.lock().expect("unpoisoned");
        let failing = match faults.fail_from {
            Some((from, when)) if number >= from => Some(when),
            _ if faults.poisoned => Some(When::Before),
            _ => None,
        };
        faults.poisoned |= failing.is_some();
        failing
    }
}

#[async_trait]
impl EventStore for FaultStore {
    async fn shops(&self) -> Result<Vec<ShopId>, StoreError> {
        self.inner.shops().await
    }

    async fn create_shop(&self, shop: &ShopId) -> Result<(), StoreError> {
        self.inner.create_shop(shop).await?;
        if self.faults.lock().expect("unpoisoned").fail_create {
            return Err(StoreError::Io(format!("a sync failed: {ENOSPC}")));
        }
        Ok(())
    }

    async fn append(&self, shop: &ShopId, batch: &AppendBatch) -> Result<u64, StoreError> {
        match self.append_fault() {
            None => self.inner.append(shop, batch).await,
            Some(When::Before) => Err(StoreError::Io(format!("a write failed: {ENOSPC}"))),
            Some(When::After) => {
                let _ = self.inner.append(shop, batch).await;
                Err(StoreError::Io(format!("a sync failed: {ENOSPC}")))
            }
        }
    }

    async fn read_from(&self, shop: &ShopId, after: u64, limit: usize) -> Result<Vec<Envelope>, StoreError> {
        self.read_fault()?;
        self.inner.read_from(shop, after, limit).await
    }

    async fn read_stream(
        &self,
        shop: &ShopId,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, StoreError> {
        self.read_fault()?;
        self.inner.read_stream(shop, stream, after_version, limit).await
    }

    async fn last_position(&self, shop: &ShopId) -> Result<u64, StoreError> {
        self.inner.last_position(shop).await
    }

    async fn wait_for(&self, shop: &ShopId, after: u64, timeout: Duration) -> Result<u64, StoreError> {
        self.inner.wait_for(shop, after, timeout).await
    }

    async fn rejections(&self, shop: &ShopId) -> Result<Vec<RejectionRecord>, StoreError> {
        self.read_fault()?;
        self.inner.rejections(shop).await
    }

    async fn verify_after(&self, shop: &ShopId, after: u64, anchor: Hash) -> Result<VerifyReport, StoreError> {
        self.read_fault()?;
        self.inner.verify_after(shop, after, anchor).await
    }

    async fn read_verified(
        &self,
        shop: &ShopId,
        after: u64,
        anchor: Hash,
        limit: usize,
    ) -> Result<(Vec<Envelope>, Hash), StoreError> {
        self.read_fault()?;
        self.inner.read_verified(shop, after, anchor, limit).await
    }

    async fn head(&self, shop: &ShopId) -> Result<(u64, Hash), StoreError> {
        self.inner.head(shop).await
    }

    async fn heal(&self) -> Result<(), StoreError> {
        self.heals.fetch_add(1, Ordering::AcqRel);
        {
            let mut faults = self.faults.lock().expect("unpoisoned");
            if faults.fail_from.is_some() {
                return Err(StoreError::Io(format!("still failing: {ENOSPC}")));
            }
            faults.poisoned = false;
        }
        self.inner.heal().await
    }

    async fn remove_empty_shop(&self, shop: &ShopId) -> Result<bool, StoreError> {
        self.inner.remove_empty_shop(shop).await
    }
}

fn shop() -> ShopId {
    ShopId::new("faulty").expect("a shop id")
}

async fn open(store: Arc<dyn EventStore>) -> Arc<Engine> {
    let engine = Engine::open(store, Arc::new(ManualClock::new(at(0))), EngineConfig::default()).await.expect("opens");
    engine.create_shop(&shop()).await.expect("created");
    Arc::new(engine)
}

async fn stock(engine: &Engine) {
    let price = Decimal::new(1000, 2);
    engine.execute(&shop(), Request::new("t", list("SKU-1", price))).await.expect("listed");
    engine
        .execute(&shop(), Request::new("t", receive("SKU-1", 1_000_000, Decimal::new(400, 2))))
        .await
        .expect("received");
}

/// Places `count` orders named `prefix-N` from 8 concurrent tasks; returns the positions of
/// the acknowledged ones and how many were answered `Unavailable`.
async fn place_many(engine: &Arc<Engine>, prefix: &str, count: usize) -> (Vec<(String, u64)>, usize) {
    let mut tasks = Vec::new();
    for task in 0..8 {
        let engine = engine.clone();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let (mut acknowledged, mut unavailable) = (Vec::new(), 0);
            for n in (task..count).step_by(8) {
                let order = format!("{prefix}-{n}");
                match engine.execute(&shop(), Request::new("t", place(&order, &[("SKU-1", 1)]))).await {
                    Ok(accepted) => acknowledged.push((order, accepted.positions.expect("an event").first)),
                    Err(CommandError::Unavailable { .. }) => unavailable += 1,
                    Err(other) => panic!("{order}: {other}"),
                }
            }
            (acknowledged, unavailable)
        }));
    }
    let (mut acknowledged, mut unavailable) = (Vec::new(), 0);
    for task in tasks {
        let (a, u) = task.await.expect("a task");
        acknowledged.extend(a);
        unavailable += u;
    }
    (acknowledged, unavailable)
}

/// Every acknowledged order is placed at its acknowledged position in `store`'s log.
async fn assert_placed(store: &dyn EventStore, acknowledged: &[(String, u64)]) {
    let events = all_events(store, &shop()).await;
    for (order, position) in acknowledged {
        let event = &events.get(*position as usize - 1).unwrap_or_else(|| panic!("{order} at {position}")).event;
        assert!(
            matches!(event, Event::OrderPlaced { order_id, .. } if order_id.as_str() == order),
            "{order} at {position}: {event:?}"
        );
    }
}

/// Polls until a new command is accepted, at most 30 s; returns how long it took.
async fn until_accepted(engine: &Engine, label: &str) -> Duration {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let order = format!("{label}-probe-{attempt}");
        match engine.execute(&shop(), Request::new("t", place(&order, &[("SKU-1", 1)]))).await {
            Ok(_) => return started.elapsed(),
            Err(CommandError::Unavailable { .. }) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("the shop did not heal: {other}"),
        }
    }
}

fn health(engine: &Engine) -> ShopHealth {
    engine.health().remove(&shop()).expect("the shop's health")
}

/// One fault, start to end: orders from 8 tasks while the `fail_from`th append fails `how`;
/// the shop refuses while it lasts, heals when it clears, and loses nothing acknowledged.
async fn a_fault_heals(when: When, fail_reads: bool) {
    let memory: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let store = FaultStore::new(memory.clone());
    let engine = open(store.clone()).await;
    stock(&engine).await;
    let (mut acknowledged, _) = place_many(&engine, "before", 40).await;
    let appended = store.appends.load(Ordering::Acquire);
    store.set(|faults| {
        faults.fail_from = Some((appended + 3, when));
        faults.fail_reads = fail_reads;
    });
    let (during, unavailable) = place_many(&engine, "during", 200).await;
    acknowledged.extend(during);
    assert!(unavailable > 0, "the fault was met");
    match health(&engine) {
        ShopHealth::Healing { reason, .. } => assert!(reason.contains("No space left on device"), "{reason}"),
        other => panic!("healing expected, not {other:?}"),
    }
    let refused = engine.execute(&shop(), Request::new("t", place("refused", &[("SKU-1", 1)]))).await;
    assert!(matches!(refused, Err(CommandError::Unavailable { .. })), "{refused:?}");
    // The writer keeps trying while the fault lasts.
    let tried = store.heals.load(Ordering::Acquire);
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.heals.load(Ordering::Acquire) < tried + 2 {
        assert!(Instant::now() < deadline, "the writer retries");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(health(&engine), ShopHealth::Healing { .. }), "still healing while the fault lasts");

    store.set(|faults| *faults = Faults { poisoned: faults.poisoned, ..Faults::default() });
    until_accepted(&engine, "after").await;
    assert_eq!(health(&engine), ShopHealth::Serving);
    let (after, unavailable) = place_many(&engine, "after", 80).await;
    assert_eq!((after.len(), unavailable), (80, 0), "healed without reopening the engine");
    acknowledged.extend(after);
    engine.close().await;

    // Read back, and through a new engine on the same log.
    assert_placed(memory.as_ref(), &acknowledged).await;
    let reopened = open(memory.clone()).await;
    let orders: Vec<String> = acknowledged.iter().map(|(order, _)| order.clone()).collect();
    let missing = reopened
        .read(&shop(), move |state| orders.into_iter().filter(|order| !state.has_order(&order.as_str().into())).count())
        .await
        .expect("read");
    assert_eq!(missing, 0, "every acknowledged order is in the reopened shop");
    reopened.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_write_with_enospc_heals_and_loses_nothing_acknowledged() {
    a_fault_heals(When::Before, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_sync_after_writing_heals_and_loses_nothing_acknowledged() {
    a_fault_heals(When::After, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_sync_with_failing_reads_heals_once_both_clear() {
    a_fault_heals(When::After, true).await;
}

/// A real sled store whose syncs fail (and, while they fail, its healing too): the shop
/// refuses, heals when syncs work again, and the database read back from disk holds every
/// acknowledged command.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sled_store_whose_sync_failed_heals_by_reopening() {
    let dir = temp_dir();
    let sled = Arc::new(SledStore::open(dir.path()).expect("opens"));
    let engine = open(sled.clone()).await;
    stock(&engine).await;
    let (mut acknowledged, _) = place_many(&engine, "before", 40).await;
    sled.inject_sync_failure(Some(ENOSPC));
    let (during, unavailable) = place_many(&engine, "during", 40).await;
    assert!(during.is_empty() && unavailable == 40, "nothing acknowledged while syncs fail");
    assert!(matches!(health(&engine), ShopHealth::Healing { .. }), "{:?}", health(&engine));
    sled.inject_sync_failure(None);
    until_accepted(&engine, "after").await;
    let (after, unavailable) = place_many(&engine, "after", 40).await;
    assert_eq!((after.len(), unavailable), (40, 0));
    acknowledged.extend(after);
    engine.close().await;
    drop(engine);
    drop(sled);
    let reopened = SledStore::open(dir.path()).expect("reopens");
    assert_placed(&reopened, &acknowledged).await;
    reopened.verify(&shop()).await.expect("the chain holds");
}

/// A shop whose creation fails halfway is taken back: neither the engine nor the store
/// has it, now or after a restart.
#[tokio::test]
async fn a_failed_shop_creation_leaves_no_shop() {
    let memory: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let store = FaultStore::new(memory.clone());
    let engine =
        Engine::open(store.clone(), Arc::new(ManualClock::new(at(0))), EngineConfig::default()).await.expect("opens");
    store.set(|faults| faults.fail_create = true);
    let created = engine.create_shop(&shop()).await;
    assert!(matches!(created, Err(OpenError::Store(_))), "{created:?}");
    assert!(!engine.shops().contains(&shop()));
    assert!(memory.shops().await.expect("listed").is_empty(), "the store keeps no half-made shop");
    store.set(|faults| faults.fail_create = false);
    engine.create_shop(&shop()).await.expect("created once the store works");
    assert!(engine.shops().contains(&shop()));
}

/// `shops_max` refuses one shop more, creating nothing.
#[tokio::test]
async fn creating_a_shop_past_shops_max_is_refused_and_creates_nothing() {
    let memory: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let config = EngineConfig { shops_max: 2, ..EngineConfig::default() };
    let engine = Engine::open(memory.clone(), Arc::new(ManualClock::new(at(0))), config).await.expect("opens");
    for name in ["a", "b"] {
        engine.create_shop(&ShopId::new(name).expect("id")).await.expect("created");
    }
    engine.create_shop(&ShopId::new("a").expect("id")).await.expect("an existing shop is no new one");
    let refused = engine.create_shop(&ShopId::new("c").expect("id")).await;
    assert!(matches!(refused, Err(OpenError::ShopLimitReached { shops_max: 2 })), "{refused:?}");
    assert_eq!(memory.shops().await.expect("listed").len(), 2);
}

/// `emporium serve` under `ulimit -n`, on `data`, with more arguments.
fn serve_limited(data: &std::path::Path, descriptors_max: u32, args: &str) -> (std::process::Child, Client) {
    let binary = env!("CARGO_BIN_EXE_emporium");
    let tokens = data.with_extension("tokens");
    std::fs::write(&tokens, format!("admin root {ADMIN}\n")).expect("tokens written");
    let script = format!(
        "ulimit -n {descriptors_max} && exec '{binary}' serve --listen 127.0.0.1:0 --data '{}' --tokens '{}' {args}",
        data.display(),
        tokens.display()
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", &script])
        .env_remove("EMPORIUM_TOKENS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the server starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("announced");
    let address = crate::http::announced_address(&line);
    (child, Client { address, token: Some(ADMIN.to_owned()) })
}

/// With 256 descriptors, creating shops until the limit ends with the typed refusal (429
/// `shop_limit_reached`), never a store failure; every shop takes an order; `/healthz` says
/// every shop serves; and `serve` starts again on the same directory.
#[test]
fn many_shops_under_a_low_descriptor_limit_end_with_the_typed_refusal() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let (mut child, client) = serve_limited(&data, 256, "--shops-max 150");
    let (mut created, mut refused) = (0, 0);
    for n in 0..170 {
        let answer = client.send("PUT", &format!("/v1/shops/s{n}"), &[], b"");
        match answer.status {
            201 => created += 1,
            429 => {
                assert_eq!(answer.code(), "shop_limit_reached", "{answer:?}");
                refused += 1;
            }
            other => panic!("shop s{n}: {other} {}", String::from_utf8_lossy(&answer.body)),
        }
    }
    assert_eq!((created, refused), (149, 21), "main and 149 more");
    let order = serde_json::json!({"sku": "S-1", "title": "T", "category": "c", "price": "1.00",
        "weight_g": 1, "low_stock_threshold": 0});
    for n in (0..149).step_by(7) {
        let listed = client.post(&format!("/v1/shops/s{n}/products"), &order);
        assert!(listed.status < 300, "s{n}: {listed:?}");
    }
    let health = client.get("/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json()["shops"].as_object().map(|shops| shops.len()), Some(150));
    assert!(client.send("PUT", "/v1/shops/late", &[], b"").status == 429);
    let _ = child.kill();
    let _ = child.wait();

    let (mut child, client) = serve_limited(&data, 256, "--shops-max 150");
    let health = client.get("/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json()["status"], "ok");
    assert_eq!(health.json()["shops"].as_object().map(|shops| shops.len()), Some(150));
    let _ = child.kill();
    let _ = child.wait();
}

/// `GET /healthz` over HTTP: 503 `degraded`, naming the shop that heals and why, while its
/// store fails; 200 `ok` with every shop serving once it healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthz_reports_a_healing_shop_and_its_recovery() {
    use emporium::service::{App, ServiceConfig, Tokens};
    let memory: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let store = FaultStore::new(memory);
    let engine = open(store.clone()).await;
    stock(&engine).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bound");
    let client = Client { address: listener.local_addr().expect("address"), token: None };
    let app = App::new(engine.clone(), Tokens::none(), ServiceConfig::default());
    let server = tokio::spawn(emporium::service::serve(listener, app, std::future::pending()));
    let get = |client: &Client| {
        let client = client.clone();
        tokio::task::spawn_blocking(move || client.get("/healthz"))
    };
    let healthy = get(&client).await.expect("answered");
    assert_eq!((healthy.status, healthy.json()["status"].clone()), (200, serde_json::json!("ok")), "{healthy:?}");
    assert_eq!(healthy.json()["shops"]["faulty"]["status"], "serving");

    store.set(|faults| faults.fail_from = Some((1, When::Before)));
    let failed = engine.execute(&shop(), Request::new("t", place("O-1", &[("SKU-1", 1)]))).await;
    assert!(matches!(failed, Err(CommandError::Unavailable { .. })), "{failed:?}");
    let degraded = get(&client).await.expect("answered");
    assert_eq!(degraded.status, 503, "{degraded:?}");
    let body = degraded.json();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["shops"]["faulty"]["status"], "healing");
    assert!(body["shops"]["faulty"]["reason"].as_str().is_some_and(|r| r.contains("No space left")), "{body}");
    assert!(body["shops"]["faulty"]["since"].is_u64(), "{body}");

    store.set(|faults| faults.fail_from = None);
    until_accepted(&engine, "after").await;
    let healed = get(&client).await.expect("answered");
    assert_eq!((healed.status, healed.json()["status"].clone()), (200, serde_json::json!("ok")), "{healed:?}");
    server.abort();
    engine.close().await;
}
