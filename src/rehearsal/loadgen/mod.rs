//! Promotion-day rehearsals: the `double11` scenario, driven against an engine.
//!
//! What a run guarantees, before the code:
//! - **Reproducible.** Everything a run sends derives from `--seed`: order `n` is planned by
//!   a generator seeded from the seed and `n` alone, so the same seed plans the same orders
//!   whatever the concurrency, and a check can re-plan any order to compare it with the log.
//! - **Durable as in production.** In-process, the engine runs on sled with every batch
//!   synced before it answers; a command counts as accepted only once it was answered.
//! - **Checked.** After the run: no SKU sold more units than it received, every accepted
//!   order holds exactly the lines it was planned with, the ledger balances, and a replay of
//!   the log from zero equals the live state. A failed check fails the run.
//!
//! The scenario: 10,000 SKUs with Zipf popularity (s = 1.07); the 100 hottest have 5,000
//! units each and sell out, so most late orders for them are refused; orders of 1 to 3 lines
//! of 1 or 2 units from a pool of 1,000,000 buyers; 90% paid at once, 10% abandoned until the
//! payment time limit expires them; then every paid order ships and is delivered, and about
//! 3% return a line, which is received and refunded.

use compact_str::CompactString;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::domain::command::{Command, Condition, Inspection, Line};
use crate::domain::ids::{CommandId, ShopId, Sku, Timestamp};
use crate::engine::{Clock, Engine};
use crate::memory::State;
use crate::rehearsal::sim::Rng;
use crate::views::{SLOW_MOVER_DAYS_DEFAULT, Views};

mod http;
mod machine;
mod plot;
mod target;

pub use http::Connection;
pub use machine::{CpuShares, CpuTicks};
pub use plot::draw;
pub use target::{Answer, Link, Target};

/// The scenario's shape.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Products listed.
    pub skus: u64,
    /// The hottest SKUs, with limited stock.
    pub hot_skus: u64,
    /// Units of each hot SKU.
    pub hot_stock: u64,
    /// Units of every other SKU.
    pub cold_stock: u64,
    /// Zipf exponent of popularity.
    pub zipf_s: f64,
    /// Buyers drawn from.
    pub customers: u64,
    /// Orders paid, in percent.
    pub paid_percent: u64,
    /// Paid orders that return a line, in per mille.
    pub return_permille: u64,
    /// The seed.
    pub seed: u64,
}

impl Scenario {
    /// The `double11` scenario.
    pub fn double11(seed: u64) -> Scenario {
        Scenario {
            skus: 10_000,
            hot_skus: 100,
            hot_stock: 5_000,
            cold_stock: 10_000_000,
            zipf_s: 1.07,
            customers: 1_000_000,
            paid_percent: 90,
            return_permille: 30,
            seed,
        }
    }
}

/// Popularity ranks drawn by inverse transform over a cumulative table.
#[derive(Clone, Debug)]
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    /// Ranks `0..n`, rank `k` with weight `1 / (k + 1)^s`.
    pub fn new(n: u64, s: f64) -> Zipf {
        assert!(n > 0 && s > 0.0);
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|k| {
                total += 1.0 / (k as f64).powf(s);
                total
            })
            .collect::<Vec<f64>>()
            .into_iter()
            .map(|c| c / total)
            .collect();
        Zipf { cumulative }
    }

    /// A rank.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        self.cumulative.partition_point(|c| *c < u).min(self.cumulative.len() - 1) as u64
    }
}

/// The SKU of a popularity rank.
pub fn sku_of(rank: u64) -> String {
    format!("D11-{rank:05}")
}

/// What order `n` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderPlan {
    /// The order id.
    pub order_id: String,
    /// The buyer.
    pub customer_id: String,
    /// SKU ranks and units, distinct SKUs, sorted by rank.
    pub lines: Vec<(u64, u64)>,
    /// Paid at once, or abandoned.
    pub pays: bool,
    /// Returns its first line after delivery.
    pub returns: bool,
}

/// Plans order `n`: a function of the scenario's seed and `n` only.
pub fn plan(scenario: &Scenario, zipf: &Zipf, n: u64) -> OrderPlan {
    let mut rng = Rng::new(scenario.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17));
    let line_count = 1 + rng.below(3);
    // A SKU drawn twice keeps its first units.
    let mut lines: Vec<(u64, u64)> = Vec::with_capacity(3);
    for _ in 0..line_count {
        let rank = zipf.sample(&mut rng);
        let units = 1 + rng.below(2);
        if lines.iter().all(|(drawn, _)| *drawn != rank) {
            lines.push((rank, units));
        }
    }
    lines.sort_unstable();
    let customer = rng.below(scenario.customers);
    let pays = rng.chance(scenario.paid_percent);
    let returns = pays && rng.below(1000) < scenario.return_permille;
    OrderPlan { order_id: format!("D11-{n:09}"), customer_id: format!("B-{customer:07}"), lines, pays, returns }
}

/// A list price from a rank: 9.90 to 509.80, fixed per SKU.
pub fn price_of(rank: u64) -> Decimal {
    Decimal::new(990 + (rank.wrapping_mul(7919) % 500) as i64 * 100, 2)
}

/// The engine time of a run: the day's start plus a step per order placed, so abandoned
/// orders pass their payment time limit while the run goes on.
#[derive(Debug)]
pub struct RunClock {
    start: Timestamp,
    step_ms: u64,
    placed: AtomicU64,
}

impl RunClock {
    /// A clock at `start` that moves `step_ms` per order.
    pub fn new(start: Timestamp, step_ms: u64) -> RunClock {
        RunClock { start, step_ms, placed: AtomicU64::new(0) }
    }

    /// One more order placed.
    pub fn tick(&self) {
        self.placed.fetch_add(1, Ordering::Relaxed);
    }

    /// Moves the clock by `duration_ms` at once.
    pub fn jump_ms(&self, duration_ms: u64) {
        self.placed.fetch_add(duration_ms / self.step_ms.max(1) + 1, Ordering::Relaxed);
    }
}

impl Clock for RunClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.start.0 + self.placed.load(Ordering::Relaxed).saturating_mul(self.step_ms))
    }
}

/// How a run ends.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// After this many orders.
    Orders(u64),
    /// After this long (and at most `ORDERS_MAX` orders).
    Duration(Duration),
}

/// Most orders a run plans.
pub const ORDERS_MAX: u64 = 100_000_000;

/// The report of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Orders placed and answered per second of the order phase.
    pub orders_per_s: f64,
    /// Of those, accepted per second.
    pub accepted_per_s: f64,
    /// Events recorded per second of the order phase.
    pub events_per_s: f64,
    /// Latency of placing an order.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Orders accepted.
    pub accepted: u64,
    /// Orders refused.
    pub refused: u64,
    /// Refusals by code.
    pub refusals: BTreeMap<String, u64>,
    /// Orders paid.
    pub paid: u64,
    /// Orders that expired unpaid.
    pub expired: u64,
    /// Parcels shipped, returns received and refunds in the tail.
    pub shipped: u64,
    /// Returns received.
    pub returned: u64,
    /// SKUs that refused an order for lack of stock (sold out, or held by unpaid orders).
    pub sold_out_skus: u64,
    /// SKUs whose paid orders took more units than they received, that shipped more than
    /// they received and restocked, or that reserve more than they hold (must be 0).
    pub oversold_skus: u64,
    /// Accepted orders whose lines differ from their plan (must be 0).
    pub mismatched_orders: u64,
    /// The trial balance total (must be 0).
    pub trial_balance: Decimal,
    /// A replay from zero equals the live state.
    pub replay_matches: bool,
    /// Every check passed.
    pub checks_passed: bool,
    /// Why a check failed.
    pub failures: Vec<String>,
    /// Peak resident memory of this process (in-process, the checks' replay included).
    pub peak_rss_mb: f64,
    /// Resident memory once every order and the tail were answered and, in-process, the
    /// views had folded the whole log: what the shop costs before the checks add a replay.
    pub rss_before_checks_mb: f64,
    /// Seconds of the order phase.
    pub order_phase_s: f64,
    /// CPU time (user and system) this process spent per order answered in the order phase,
    /// in microseconds: in-process the engine, its views and the load generator together,
    /// over HTTP the load generator alone. `None` where `/proc/self/stat` cannot be read or no
    /// order was answered.
    pub cpu_us_per_order: Option<f64>,
    /// How the whole machine's CPU time divided over the order phase (every process on it:
    /// over HTTP on one machine, the server's too); `None` where `/proc/stat` cannot be read.
    pub order_phase_machine_cpu: Option<CpuShares>,
    /// The processor, from `/proc/cpuinfo`; `None` where it names none.
    pub cpu_model: Option<String>,
    /// The cores this process could run on.
    pub cores: usize,
    /// In-process, the engine's group commits appended during the order phase (`None`
    /// over HTTP).
    pub group_commits: Option<u64>,
    /// Their mean size in commands.
    pub group_commit_commands_mean: Option<f64>,
    /// Their mean time from being handed to the store to being durable, in milliseconds.
    pub group_commit_ms_mean: Option<f64>,
    /// Seconds of the tail.
    pub tail_s: f64,
    /// Per second of the order phase: orders answered and p99 latency in ms.
    pub timeline: Vec<(u64, f64)>,
}

/// The engine's group-commit totals at one moment, to take the order phase's share.
struct CommitTotals {
    /// Batches of commands decided, and the commands in them.
    batches: u64,
    commands: f64,
    /// Batches appended, and the seconds until each was durable.
    appends: u64,
    seconds: f64,
}

impl CommitTotals {
    /// In-process, the engine's totals so far; `None` over HTTP.
    fn of(target: &Target) -> Option<CommitTotals> {
        let Target::InProcess { engine, .. } = target else { return None };
        let stats = engine.stats();
        Some(CommitTotals {
            batches: stats.batch_commands.count(),
            commands: stats.batch_commands.sum(),
            appends: stats.group_commit_s.count(),
            seconds: stats.group_commit_s.sum(),
        })
    }

    fn since(&self, before: &CommitTotals) -> CommitTotals {
        CommitTotals {
            batches: self.batches.saturating_sub(before.batches),
            commands: self.commands - before.commands,
            appends: self.appends.saturating_sub(before.appends),
            seconds: self.seconds - before.seconds,
        }
    }

    fn commands_mean(&self) -> Option<f64> {
        (self.batches > 0).then(|| self.commands / self.batches as f64)
    }

    fn ms_mean(&self) -> Option<f64> {
        (self.appends > 0).then(|| self.seconds * 1000.0 / self.appends as f64)
    }
}

/// Peak resident memory in MiB, from `/proc/self/status` (0 where there is none).
pub fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// Resident memory now in MiB, from `/proc/self/status` (0 where there is none).
pub fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// CPU time this process used so far (user and system), in seconds, from `/proc/self/stat`.
///
/// The kernel counts it in ticks of `USER_HZ`, which is 100 on every architecture Linux
/// supports; `None` where there is no such file.
pub fn cpu_s() -> Option<f64> {
    const USER_HZ: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name, in parentheses, may hold spaces: fields are counted after it.
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let user_ticks: u64 = fields.next()?.parse().ok()?;
    let system_ticks: u64 = fields.next()?.parse().ok()?;
    Some((user_ticks + system_ticks) as f64 / USER_HZ)
}

fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn latency_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 minutes, 3 significant digits; the bounds cannot be wrong.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

/// Longest run the per-second timeline covers; later seconds share its last slot.
const TIMELINE_SECONDS_MAX: usize = 24 * 60 * 60;

/// Latencies per second of the order phase, shared by every submitter: one histogram per
/// second in all (each is a few hundred KiB, so one per submitter per second would cost
/// more memory than the engine).
#[derive(Default)]
struct Timeline {
    seconds: std::sync::Mutex<Vec<Histogram<u64>>>,
}

impl Timeline {
    fn record(&self, second: u64, latency_us: u64) {
        let second = usize::try_from(second).unwrap_or(usize::MAX).min(TIMELINE_SECONDS_MAX - 1);
        let mut seconds = self.seconds.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while seconds.len() <= second {
            seconds.push(latency_histogram());
        }
        seconds[second].saturating_record(latency_us);
    }

    /// Per second: orders answered and their p99 latency in milliseconds.
    fn points(&self) -> Vec<(u64, f64)> {
        let seconds = self.seconds.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        seconds.iter().map(|h| (h.len(), h.value_at_quantile(0.99) as f64 / 1000.0)).collect()
    }
}

/// What one submitter saw.
struct Tally {
    latency_us: Histogram<u64>,
    accepted: Vec<u64>,
    refused: BTreeMap<String, u64>,
    /// SKUs named by a refusal for lack of stock.
    short: crate::domain::idmap::IdSet<String>,
    events: u64,
    paid: u64,
    failures: Vec<String>,
}

/// Links opened at once for the setup and the tail; each sends its commands one by one.
const SIDE_LINKS_MAX: usize = 256;

/// Lists and stocks every SKU: each link lists a SKU, then receives its stock.
async fn setup(target: &Target, shop: &ShopId, scenario: &Scenario, links: usize) -> Result<(), String> {
    let next = AtomicU64::new(0);
    let runs = (0..links.clamp(1, SIDE_LINKS_MAX)).map(|_| {
        let next = &next;
        async move {
            let mut link = target.link().await?;
            loop {
                let rank = next.fetch_add(1, Ordering::Relaxed);
                if rank >= scenario.skus {
                    return Ok::<(), String>(());
                }
                let sku = sku_of(rank);
                let list = Command::ListProduct {
                    sku: sku.as_str().into(),
                    title: format!("Double 11 product {rank}"),
                    category: format!("c{}", rank % 50),
                    price: price_of(rank),
                    weight_g: 100 + rank % 900,
                    low_stock_threshold: 10,
                };
                let quantity = if rank < scenario.hot_skus { scenario.hot_stock } else { scenario.cold_stock };
                let receive = Command::ReceiveStock {
                    sku: sku.as_str().into(),
                    quantity,
                    unit_cost: (price_of(rank) * Decimal::new(4, 1)).round_dp(2),
                    supplier_ref: format!("PO-{rank}"),
                };
                for (id, command) in [(format!("list-{sku}"), list), (format!("receive-{sku}"), receive)] {
                    match link.send(shop, &id, "loadgen", command).await {
                        Ok(Answer::Accepted { .. }) => {}
                        Ok(Answer::Refused { code, .. }) => return Err(format!("setup {id}: refused: {code}")),
                        Err(error) => return Err(format!("setup {error}")),
                    }
                }
            }
        }
    });
    for result in futures_util::future::join_all(runs).await {
        result?;
    }
    Ok(())
}

/// `skus` holds the SKU of every rank, made once per run rather than formatted per line.
fn place_command(scenario_plan: &OrderPlan, skus: &[Sku]) -> Command {
    // Ranks come from the scenario's own sampler, so the table always has them.
    let sku = |rank: u64| usize::try_from(rank).ok().and_then(|rank| skus.get(rank)).cloned();
    Command::PlaceOrder {
        order_id: scenario_plan.order_id.as_str().into(),
        customer_id: scenario_plan.customer_id.as_str().into(),
        lines: scenario_plan
            .lines
            .iter()
            .map(|(rank, units)| Line { sku: sku(*rank).unwrap_or_else(|| Sku::from(sku_of(*rank))), quantity: *units })
            .collect(),
        region: "zhejiang".to_owned(),
        reservation_id: None,
    }
}

/// What every submitter shares.
struct Shared {
    shop: ShopId,
    scenario: Arc<Scenario>,
    zipf: Arc<Zipf>,
    /// The SKU of every rank.
    skus: Vec<Sku>,
    /// The engine's clock, in-process.
    clock: Option<Arc<RunClock>>,
    /// The next order number to place.
    next: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
    stop: Stop,
    started: Instant,
    timeline: Arc<Timeline>,
}

/// One submitter of the order phase: takes order numbers until the run stops, places each
/// order and pays the ones the plan pays.
async fn submitter(mut link: Link, shared: Arc<Shared>) -> Tally {
    let Shared { shop, scenario, zipf, skus, clock, next, answered, stop, started, timeline } = &*shared;
    let mut tally = Tally {
        latency_us: latency_histogram(),
        accepted: Vec::new(),
        refused: BTreeMap::new(),
        short: crate::domain::idmap::IdSet::default(),
        events: 0,
        paid: 0,
        failures: Vec::new(),
    };
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let more = match stop {
            Stop::Orders(orders) => n < *orders,
            Stop::Duration(duration) => started.elapsed() < *duration && n < ORDERS_MAX,
        };
        if !more {
            return tally;
        }
        let order = plan(scenario, zipf, n);
        if let Some(clock) = clock {
            clock.tick();
        }
        let sent = Instant::now();
        let placed = link.send(shop, &format!("place-{n}"), "storefront", place_command(&order, skus)).await;
        answered.fetch_add(1, Ordering::Relaxed);
        let latency_us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
        tally.latency_us.saturating_record(latency_us);
        timeline.record(started.elapsed().as_secs(), latency_us);
        match placed {
            Ok(Answer::Accepted { events }) => {
                tally.events += events;
                tally.accepted.push(n);
                if order.pays {
                    let total: Decimal =
                        order.lines.iter().map(|(rank, units)| price_of(*rank) * Decimal::from(*units)).sum();
                    let pay = Command::Pay {
                        order_id: order.order_id.as_str().into(),
                        payment_id: format!("PAY-{n}").as_str().into(),
                        amount: total,
                    };
                    match link.send(shop, &format!("pay-{n}"), "payments", pay).await {
                        Ok(Answer::Accepted { events }) => {
                            tally.events += events;
                            tally.paid += 1;
                        }
                        Ok(Answer::Refused { code, .. }) => {
                            tally.failures.push(format!("paying {} was refused: {code}", order.order_id))
                        }
                        Err(error) => tally.failures.push(format!("paying {}: {error}", order.order_id)),
                    }
                }
            }
            Ok(Answer::Refused { code, short_skus }) => {
                tally.short.extend(short_skus);
                *tally.refused.entry(code).or_insert(0) += 1;
            }
            Err(error) => {
                tally.failures.push(format!("placing {}: {error}", order.order_id));
                return tally;
            }
        }
    }
}

/// The run's options.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The scenario.
    pub scenario: Scenario,
    /// When to stop placing orders.
    pub stop: Stop,
    /// Concurrent submitters (and, over HTTP, connections).
    pub concurrency: usize,
    /// Counts orders answered, for a progress display.
    pub answered: Arc<AtomicU64>,
}

/// Runs the scenario against `target` on `shop`, which it creates and which must be new and
/// empty. Returns the report; its `checks_passed` says whether every check held.
///
/// In-process, abandoned orders expire when the run moves the engine's clock past the
/// payment time limit. Over HTTP the server keeps its own clock, so they stay awaiting
/// payment until the server's limit passes; the report counts those that already expired.
pub async fn run(target: Target, shop: ShopId, options: &RunOptions) -> Result<Report, String> {
    assert!(options.concurrency > 0);
    let scenario = Arc::new(options.scenario.clone());
    let zipf = Arc::new(Zipf::new(scenario.skus, scenario.zipf_s));
    create_shop(&target, &shop).await?;
    setup(&target, &shop, &scenario, options.concurrency).await?;

    let mut links = Vec::with_capacity(options.concurrency);
    for _ in 0..options.concurrency {
        links.push(target.link().await?);
    }
    let clock = match &target {
        Target::InProcess { clock, .. } => Some(clock.clone()),
        Target::Http { .. } => None,
    };
    let commits_before = CommitTotals::of(&target);
    let cpu_before_s = cpu_s();
    let machine_before = CpuTicks::now();
    let started = Instant::now();
    let shared = Arc::new(Shared {
        shop: shop.clone(),
        scenario: scenario.clone(),
        zipf: zipf.clone(),
        skus: (0..scenario.skus).map(|rank| Sku::from(sku_of(rank))).collect(),
        clock: clock.clone(),
        next: Arc::new(AtomicU64::new(0)),
        answered: options.answered.clone(),
        stop: options.stop,
        started,
        timeline: Arc::new(Timeline::default()),
    });
    let tasks: Vec<_> = links.into_iter().map(|link| tokio::spawn(submitter(link, shared.clone()))).collect();
    let mut tallies = Vec::new();
    for task in tasks {
        tallies.push(task.await.map_err(|e| format!("a submitter failed: {e}"))?);
    }
    let order_phase_s = started.elapsed().as_secs_f64();
    let order_phase_cpu_s = cpu_s().zip(cpu_before_s).map(|(after, before)| after - before);
    let order_phase_machine_cpu =
        CpuTicks::now().zip(machine_before).and_then(|(after, before)| after.shares_since(&before));
    let commits = CommitTotals::of(&target).zip(commits_before).map(|(after, before)| after.since(&before));

    let mut latency = latency_histogram();
    let mut accepted: Vec<u64> = Vec::new();
    let mut refusals: BTreeMap<String, u64> = BTreeMap::new();
    let (mut events, mut paid, mut failures) = (0, 0, Vec::new());
    let mut short = crate::domain::idmap::IdSet::default();
    for tally in tallies {
        latency.add(&tally.latency_us).map_err(|e| e.to_string())?;
        accepted.extend(tally.accepted);
        for (code, count) in tally.refused {
            *refusals.entry(code).or_insert(0) += count;
        }
        events += tally.events;
        paid += tally.paid;
        short.extend(tally.short);
        failures.extend(tally.failures);
    }
    accepted.sort_unstable();
    let refused: u64 = refusals.values().sum();
    let answered = accepted.len() as u64 + refused;

    // Abandoned orders pass their payment time limit; the engine's tick records it.
    if let Target::InProcess { engine, clock } = &target {
        clock.jump_ms(crate::domain::limits::PAYMENT_TTL_MS_MAX);
        engine.tick(&shop).await.map_err(|e| e.to_string())?;
    }

    let tail_started = Instant::now();
    let (shipped, returned) = tail(&target, &shop, &scenario, &zipf, &accepted, options.concurrency).await?;
    let tail_s = tail_started.elapsed().as_secs_f64();
    if let Target::InProcess { engine, .. } = &target {
        let end = engine.store().last_position(&shop).await.map_err(|e| e.to_string())?;
        engine.views_reach(&shop, end, Duration::from_secs(600)).await.map_err(|e| e.to_string())?;
    }
    let rss_before_checks_mb = rss_mb();

    let checks = match &target {
        Target::InProcess { engine, .. } => check_engine(engine, &shop, &scenario, &zipf, &accepted).await?,
        Target::Http { .. } => check_http(&target, &shop, &scenario, &zipf, &accepted).await?,
    };
    failures.extend(checks.failures);
    let sold_out_skus = short.len() as u64;
    let ms = |us: u64| us as f64 / 1000.0;
    let phase = order_phase_s.max(1e-9);
    Ok(Report {
        orders_per_s: answered as f64 / phase,
        accepted_per_s: accepted.len() as f64 / phase,
        events_per_s: events as f64 / phase,
        p50_ms: ms(latency.value_at_quantile(0.50)),
        p90_ms: ms(latency.value_at_quantile(0.90)),
        p99_ms: ms(latency.value_at_quantile(0.99)),
        p999_ms: ms(latency.value_at_quantile(0.999)),
        max_ms: ms(latency.max()),
        accepted: accepted.len() as u64,
        refused,
        refusals,
        paid,
        expired: checks.expired,
        shipped,
        returned,
        sold_out_skus,
        oversold_skus: checks.oversold_skus,
        mismatched_orders: checks.mismatched_orders,
        trial_balance: checks.trial_balance,
        replay_matches: checks.replay_matches,
        checks_passed: failures.is_empty(),
        failures,
        peak_rss_mb: peak_rss_mb(),
        rss_before_checks_mb,
        order_phase_s,
        cpu_us_per_order: order_phase_cpu_s.filter(|_| answered > 0).map(|cpu| cpu * 1e6 / answered as f64),
        order_phase_machine_cpu,
        cpu_model: machine::cpu_model(),
        cores: machine::cores(),
        group_commits: commits.as_ref().map(|c| c.appends),
        group_commit_commands_mean: commits.as_ref().and_then(|c| c.commands_mean()),
        group_commit_ms_mean: commits.as_ref().and_then(|c| c.ms_mean()),
        tail_s,
        timeline: shared.timeline.points(),
    })
}

/// Creates the shop; it must hold no events yet.
async fn create_shop(target: &Target, shop: &ShopId) -> Result<(), String> {
    let fresh = |last: u64| {
        if last == 0 { Ok(()) } else { Err(format!("shop {shop} already has events: a run needs a new shop")) }
    };
    match target {
        Target::InProcess { engine, .. } => {
            engine.create_shop(shop).await.map_err(|e| e.to_string())?;
            fresh(engine.store().last_position(shop).await.map_err(|e| e.to_string())?)
        }
        Target::Http { .. } => {
            let mut link = target.link().await?;
            let path = format!("/v1/shops/{shop}");
            let (status, answer) = link.http("PUT", &path).await?;
            if !(200..300).contains(&status) {
                return Err(format!("PUT {path}: {status} {answer}"));
            }
            let page = link.get(&format!("/v1/shops/{shop}/events?limit=1")).await?;
            fresh(page["next_after"].as_u64().unwrap_or(u64::MAX))
        }
    }
}

/// Ships and delivers every paid order; returns and refunds about 3% of them.
async fn tail(
    target: &Target,
    shop: &ShopId,
    scenario: &Scenario,
    zipf: &Zipf,
    accepted: &[u64],
    concurrency: usize,
) -> Result<(u64, u64), String> {
    let shipped = AtomicU64::new(0);
    let returned = AtomicU64::new(0);
    let per_task = accepted.len().div_ceil(concurrency.clamp(1, SIDE_LINKS_MAX)).max(1);
    let runs = accepted.chunks(per_task).map(|chunk| {
        let (shipped, returned) = (&shipped, &returned);
        async move {
            let mut link = target.link().await?;
            for &n in chunk {
                let order = plan(scenario, zipf, n);
                if !order.pays {
                    continue;
                }
                for (step_id, command) in tail_steps(n, &order) {
                    match link.send(shop, &step_id, "warehouse", command).await? {
                        Answer::Accepted { .. } => {}
                        Answer::Refused { code, .. } => return Err(format!("{step_id} was refused: {code}")),
                    }
                }
                shipped.fetch_add(1, Ordering::Relaxed);
                if order.returns {
                    returned.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<(), String>(())
        }
    });
    for result in futures_util::future::join_all(runs).await {
        result?;
    }
    Ok((shipped.into_inner(), returned.into_inner()))
}

/// What happens to paid order `n` after the order phase, with each step's command id.
fn tail_steps(n: u64, order: &OrderPlan) -> Vec<(String, Command)> {
    let id = order.order_id.as_str();
    let lines: Vec<Line> = order.lines.iter().map(|(rank, units)| Line::new(&sku_of(*rank), *units)).collect();
    let mut steps = vec![
        (
            format!("ship-{n}"),
            Command::Ship {
                order_id: id.into(),
                shipment_id: "P1".into(),
                carrier: "SF Express".to_owned(),
                tracking_number: format!("SF{n}"),
                lines,
            },
        ),
        (format!("deliver-{n}"), Command::ConfirmDelivery { order_id: id.into(), shipment_id: "P1".into() }),
    ];
    if order.returns {
        let (rank, units) = order.lines[0];
        let sku = sku_of(rank);
        steps.push((
            format!("return-{n}"),
            Command::RequestReturn {
                order_id: id.into(),
                return_id: "R1".into(),
                lines: vec![Line::new(&sku, units)],
                reason: "did not fit".to_owned(),
            },
        ));
        steps.push((
            format!("inspect-{n}"),
            Command::ReceiveReturn {
                order_id: id.into(),
                return_id: "R1".into(),
                inspections: vec![Inspection {
                    sku: sku.as_str().into(),
                    quantity: units,
                    condition: Condition::Resellable,
                }],
            },
        ));
        steps.push((
            format!("refund-{n}"),
            Command::Refund {
                order_id: id.into(),
                refund_id: "RF1".into(),
                amount: price_of(rank) * Decimal::from(units),
                return_id: Some("R1".into()),
            },
        ));
    }
    steps
}

struct Checks {
    oversold_skus: u64,
    mismatched_orders: u64,
    trial_balance: Decimal,
    replay_matches: bool,
    expired: u64,
    failures: Vec<String>,
}

/// The checks on a shop's state: every accepted order holds exactly its planned lines, and
/// no SKU sold, shipped or reserved more than it had. Returns (oversold SKUs, mismatched
/// orders, expired orders).
fn check_state(
    scenario: &Scenario,
    zipf: &Zipf,
    accepted: &[u64],
    state: &State,
    failures: &mut Vec<String>,
) -> (u64, u64, u64) {
    // Units each SKU sold by the plans of the accepted orders, against what it received.
    let mut sold: BTreeMap<u64, u64> = BTreeMap::new();
    let mut mismatched_orders = 0;
    for &n in accepted {
        let order = plan(scenario, zipf, n);
        // Unpaid orders expired and gave their units back (or still hold them); paid ones keep them.
        if order.pays {
            for (rank, units) in &order.lines {
                *sold.entry(*rank).or_insert(0) += units;
            }
        }
        // Read back from the spill where the writer keeps an order there; unreadable is a mismatch.
        let held: Option<Vec<(String, u64)>> = state
            .order(&order.order_id.as_str().into())
            .ok()
            .flatten()
            .map(|o| o.lines.iter().map(|l| (l.sku.as_str().to_owned(), l.quantity)).collect());
        let planned: Vec<(String, u64)> = order.lines.iter().map(|(rank, units)| (sku_of(*rank), *units)).collect();
        if held.as_ref() != Some(&planned) {
            mismatched_orders += 1;
        }
    }
    if mismatched_orders > 0 {
        failures.push(format!("{mismatched_orders} accepted orders do not hold exactly their lines"));
    }
    let mut oversold_skus = 0;
    for product in state.products() {
        let rank = product.sku.as_str().trim_start_matches("D11-").parse::<u64>().unwrap_or(u64::MAX);
        let sold_units = sold.get(&rank).copied().unwrap_or(0);
        let stock = &product.stock;
        let oversold = sold_units > stock.received
            || stock.shipped > stock.received.saturating_add(stock.restocked)
            || stock.reserved > stock.on_hand;
        if oversold {
            oversold_skus += 1;
        }
    }
    if oversold_skus > 0 {
        failures.push(format!("{oversold_skus} SKUs sold more than they received"));
    }
    let (mut expired, mut unreadable) = (0, 0);
    for order in state.orders() {
        match order {
            Ok(order) => expired += u64::from(order.status() == crate::domain::state::OrderStatus::Expired),
            Err(_) => unreadable += 1,
        }
    }
    if unreadable > 0 {
        failures.push(format!("{unreadable} orders could not be read back from the spill"));
    }
    (oversold_skus, mismatched_orders, expired)
}

/// The books: the trial balance total, which must be zero, and the ledger agreeing with the
/// state it was folded beside.
fn check_books(views: &Views, failures: &mut Vec<String>) -> Decimal {
    let ledger = views.ledger.projection();
    let trial_balance: Decimal = ledger.trial_balance().iter().map(|(_, balance)| *balance).sum();
    if !trial_balance.is_zero() {
        failures.push(format!("the trial balance is {trial_balance}, not zero"));
    }
    if let Err(broken) = ledger.check(views.shop.projection()) {
        failures.push(format!("the ledger does not hold: {broken}"));
    }
    trial_balance
}

/// The checks in-process: on the live state and views, and a replay of the log from zero
/// into a new state that must equal the live one.
async fn check_engine(
    engine: &Engine,
    shop: &ShopId,
    scenario: &Scenario,
    zipf: &Zipf,
    accepted: &[u64],
) -> Result<Checks, String> {
    // The live state is checked where it lives, on the shop's writer, not cloned: a clone
    // would be one more whole state in memory at the run's peak.
    let inputs = (scenario.clone(), zipf.clone(), accepted.to_vec());
    let (counts, mut failures, policy) = engine
        .read(shop, move |state| {
            let (scenario, zipf, accepted) = inputs;
            let mut failures = Vec::new();
            let counts = check_state(&scenario, &zipf, &accepted, state, &mut failures);
            (counts, failures, *state.policy())
        })
        .await
        .map_err(|e| e.to_string())?;
    let (oversold_skus, mismatched_orders, expired) = counts;
    // The books, as the live views hold them once they reached the log's end.
    let end = engine.store().last_position(shop).await.map_err(|e| e.to_string())?;
    let reached = engine.views_reach(shop, end, Duration::from_secs(600)).await.map_err(|e| e.to_string())?;
    if reached < end {
        failures.push(format!("the views reached {reached}, not the log's end {end}"));
    }
    let trial_balance = engine.views(shop, |views| check_books(views, &mut failures)).map_err(|e| e.to_string())?;
    let mut replayed = State::new();
    replayed.set_policy(policy);
    let mut after = 0;
    loop {
        let page = engine.store().read_from(shop, after, 65_536).await.map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        after = last.position;
        replayed.apply_all(page.iter().map(|envelope| &envelope.event));
    }
    let replay_matches = engine.read(shop, move |live| replayed == *live).await.map_err(|e| e.to_string())?;
    if !replay_matches {
        failures.push("a replay from zero differs from the live state".to_owned());
    }
    Ok(Checks { oversold_skus, mismatched_orders, trial_balance, replay_matches, expired, failures })
}

/// An event as the server's feed shows it; the fields a replay needs.
#[derive(serde::Deserialize)]
struct FeedLine {
    position: u64,
    stream: CompactString,
    stream_version: u64,
    recorded_at: u64,
    command_id: String,
    correlation_id: CompactString,
    actor: CompactString,
    event: crate::domain::event::Event,
}

/// Events read per page of the server's feed.
const FEED_PAGE_EVENTS: u64 = 1000;

/// How long the checks wait for the server's views to reach the end of its log.
const VIEWS_WAIT_MS: u64 = 600_000;

/// The checks over HTTP: the server's whole log, read through its feed and replayed from
/// zero here into a state and views, passes the same checks, and the server's live stock
/// levels and trial balance equal the replay's.
async fn check_http(
    target: &Target,
    shop: &ShopId,
    scenario: &Scenario,
    zipf: &Zipf,
    accepted: &[u64],
) -> Result<Checks, String> {
    let mut failures = Vec::new();
    let mut link = target.link().await?;
    let mut state = State::new();
    let mut views = Views::new();
    let mut after = 0;
    loop {
        let page = link.get(&format!("/v1/shops/{shop}/events?after={after}&limit={FEED_PAGE_EVENTS}")).await?;
        let lines: Vec<FeedLine> =
            serde_json::from_value(page["events"].clone()).map_err(|e| format!("the feed after {after}: {e}"))?;
        let Some(last) = lines.last() else { break };
        after = last.position;
        let mut envelopes = Vec::with_capacity(lines.len());
        for line in lines {
            let command_id = CommandId::new(&line.command_id).map_err(|e| format!("the feed: {e}"))?;
            state.apply(&line.event);
            envelopes.push(crate::log::record::Envelope {
                position: line.position,
                stream: line.stream,
                stream_version: line.stream_version,
                recorded_at: Timestamp(line.recorded_at),
                command_id,
                fingerprint: [0; 16],
                correlation_id: line.correlation_id,
                actor: line.actor,
                event: line.event,
            });
        }
        views.catch_up(&envelopes, emporium_projections::AsOf::End).map_err(|gap| format!("the feed: {gap}"))?;
    }
    let (oversold_skus, mismatched_orders, expired) = check_state(scenario, zipf, accepted, &state, &mut failures);
    let trial_balance = check_books(&views, &mut failures);
    // The server's live views, once they folded the whole log, against the replay.
    let deadline = Instant::now() + Duration::from_millis(VIEWS_WAIT_MS);
    let mut waited = tokio::time::interval(Duration::from_millis(50));
    let live_stock = loop {
        waited.tick().await;
        let stock = link.get(&format!("/v1/shops/{shop}/stock")).await?;
        if stock["as_of_position"].as_u64() == Some(after) || Instant::now() > deadline {
            break stock;
        }
    };
    let live_books = link.get(&format!("/v1/shops/{shop}/ledger/trial-balance")).await?;
    let replayed_stock = serde_json::to_value(views.shop.projection().stock_levels(SLOW_MOVER_DAYS_DEFAULT))
        .map_err(|e| e.to_string())?;
    let replayed_books: Vec<(String, Decimal)> = views
        .ledger
        .projection()
        .trial_balance()
        .iter()
        .map(|(account, balance)| (account.name().to_owned(), *balance))
        .collect();
    let live_books: Vec<(String, Decimal)> = live_books["accounts"]
        .as_array()
        .map(|accounts| {
            accounts
                .iter()
                .filter_map(|a| Some((a["name"].as_str()?.to_owned(), a["balance"].as_str()?.parse().ok()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut replay_matches = true;
    if live_stock["as_of_position"].as_u64() != Some(after) {
        failures
            .push(format!("the server's views did not reach the log's end {after}: {}", live_stock["as_of_position"]));
        replay_matches = false;
    } else if live_stock["stock"] != replayed_stock {
        failures.push("the server's stock levels differ from a replay of its log from zero".to_owned());
        replay_matches = false;
    }
    if live_books != replayed_books {
        failures.push("the server's trial balance differs from a replay of its log from zero".to_owned());
        replay_matches = false;
    }
    Ok(Checks { oversold_skus, mismatched_orders, trial_balance, replay_matches, expired, failures })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_while_this_process_computes() {
        let before = cpu_s().expect("/proc/self/stat");
        let wall_limit = Instant::now() + Duration::from_secs(20);
        let mut spun: u64 = 0;
        // Spin until the kernel has counted a tenth of a second more, within a bound.
        while cpu_s().expect("/proc/self/stat") < before + 0.1 && Instant::now() < wall_limit {
            for i in 0..100_000u64 {
                spun = std::hint::black_box(spun.wrapping_add(i));
            }
        }
        assert!(cpu_s().expect("/proc/self/stat") >= before + 0.1, "CPU time did not grow ({spun})");
    }

    #[test]
    fn zipf_favours_low_ranks_and_stays_in_range() {
        let zipf = Zipf::new(10_000, 1.07);
        let mut rng = Rng::new(7);
        let draws: Vec<u64> = (0..100_000).map(|_| zipf.sample(&mut rng)).collect();
        assert!(draws.iter().all(|rank| *rank < 10_000));
        let top = draws.iter().filter(|rank| **rank < 100).count();
        // The hottest 1% of SKUs get roughly 60% of the draws at s = 1.07.
        assert!((50_000..70_000).contains(&top), "{top}");
    }

    #[test]
    fn an_order_plan_depends_on_the_seed_and_its_number_only() {
        let scenario = Scenario::double11(42);
        let zipf = Zipf::new(scenario.skus, scenario.zipf_s);
        assert_eq!(plan(&scenario, &zipf, 17), plan(&scenario, &zipf, 17));
        assert_ne!(plan(&scenario, &zipf, 17), plan(&scenario, &zipf, 18));
        let other = Scenario::double11(43);
        assert_ne!(plan(&scenario, &zipf, 17), plan(&other, &zipf, 17));
        let plans: Vec<OrderPlan> = (0..10_000).map(|n| plan(&scenario, &zipf, n)).collect();
        let paid = plans.iter().filter(|p| p.pays).count();
        assert!((8_700..9_300).contains(&paid), "{paid}");
        assert!(plans.iter().all(|p| (1..=3).contains(&p.lines.len())));
        assert!(plans.iter().flat_map(|p| &p.lines).all(|(_, units)| (1..=2).contains(units)));
    }
}
