//! The log's end witnessed outside the log, and the read-only commands that never write:
//! through the real binary, as an operator meets them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use emporium::log::layout;
use serde_json::{Value, json};

use crate::http::{ADMIN, AUDITOR, Client, OPERATOR, Response, Server};
use crate::support::temp_dir;

const SHOP: &str = "/v1/shops/main";

/// Lists a product with plenty of stock in the shop `main`.
fn set_up(client: &Client) {
    let list = json!({"sku": "W-1", "title": "Witnessed", "category": "misc", "price": "2.50", "weight_g": 1,
        "low_stock_threshold": 0});
    let listed = client.post(&format!("{SHOP}/products"), &list);
    assert_eq!(listed.status, 201, "{}", String::from_utf8_lossy(&listed.body));
    let receive = json!({"quantity": 100000, "unit_cost": "1.00", "supplier_ref": "PO"});
    assert_eq!(client.post(&format!("{SHOP}/products/W-1/receipts"), &receive).status, 200);
}

fn order(id: &str) -> Value {
    json!({"order_id": id, "customer_id": "C-1", "region": "r", "lines": [{"sku": "W-1", "quantity": 1}]})
}

/// Places order `id`; returns the position of its event.
fn place(client: &Client, id: &str) -> u64 {
    let placed = client.post(&format!("{SHOP}/orders"), &order(id));
    assert_eq!(placed.status, 201, "{}", String::from_utf8_lossy(&placed.body));
    placed.json()["positions"]["first"].as_u64().expect("a position")
}

/// Stops the server with SIGTERM; it exits 0.
fn stop(server: Server) {
    server.terminate();
    let (clean, said) = server.wait();
    assert!(clean, "the server exits 0: {said}");
}

/// Runs `emporium` with `args` and `--data data`, its temporary directory `tmp`:
/// (success, stdout, stderr).
fn run(args: &[&str], data: &Path, tmp: &Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_emporium"))
        .args(args)
        .arg("--data")
        .arg(data)
        .env("TMPDIR", tmp)
        .output()
        .expect("runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("created");
    for entry in std::fs::read_dir(from).expect("listed") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copied");
        }
    }
}

/// Every file under `dir`, with its length and hash.
fn listing(dir: &Path) -> BTreeMap<PathBuf, (u64, String)> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).expect("listed") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                let hash = blake3::hash(&bytes).to_hex().to_string();
                files.insert(path.strip_prefix(dir).expect("inside").to_path_buf(), (bytes.len() as u64, hash));
            }
        }
    }
    files
}

fn message(response: &Response) -> String {
    response.json()["error"]["message"].as_str().unwrap_or("").to_owned()
}

/// Places orders until the server stops; returns the last position.
fn served_day(data: &Path, orders: usize, prefix: &str, first: bool) -> u64 {
    let server = Server::start(data, true);
    let client = server.client().with_token(OPERATOR);
    if first {
        set_up(&client);
    }
    let mut last = 0;
    for n in 0..orders {
        last = place(&client, &format!("{prefix}-{n}"));
    }
    stop(server);
    last
}

/// The issue's case: the log restored from an older copy, behind the engine snapshot the
/// engine wrote since. `serve` refuses the shop naming both positions and appends nothing,
/// the other shops are served, and `verify` fails naming the shop.
#[test]
fn a_log_cut_back_behind_its_witness_is_refused_and_verify_fails() {
    let dir = temp_dir();
    let (data, tmp) = (dir.path().join("data"), dir.path().join("tmp"));
    std::fs::create_dir(&tmp).expect("created");
    let early_end = served_day(&data, 5, "A", true);
    let early = dir.path().join("early-log");
    copy_dir(&layout::log_dir(&data), &early);
    let witnessed = served_day(&data, 20, "B", false);
    assert!(witnessed > early_end + 10, "{witnessed} after {early_end}");
    let snapshots: Vec<_> = std::fs::read_dir(data.join("snapshots/main/engine")).expect("snapshots").collect();
    assert!(!snapshots.is_empty(), "the engine wrote a snapshot at close");

    std::fs::remove_dir_all(layout::log_dir(&data)).expect("removed");
    copy_dir(&early, &layout::log_dir(&data));

    let server = Server::start(&data, true);
    let client = server.client().with_token(OPERATOR);
    let refused = client.post(&format!("{SHOP}/orders"), &order("C-0"));
    assert_eq!(refused.status, 503, "{}", String::from_utf8_lossy(&refused.body));
    let said = message(&refused);
    let positions = format!("ends at position {early_end}, before its witnessed position {witnessed}");
    assert!(said.contains(&positions), "{said}");
    let read = client.get(&format!("{SHOP}/orders/A-0"));
    assert_eq!(read.status, 503, "a refused shop serves no reads either");
    let admin = server.client().with_token(ADMIN);
    assert_eq!(admin.send("PUT", "/v1/shops/other", &[], b"").status, 201);
    let list = json!({"sku": "O-1", "title": "Other", "category": "misc", "price": "1.00", "weight_g": 1,
        "low_stock_threshold": 0});
    assert_eq!(admin.post("/v1/shops/other/products", &list).status, 201, "the other shops are served");
    let report = server.client().with_token(AUDITOR).get(&format!("{SHOP}/verify"));
    assert_eq!(report.status, 200);
    let report = report.json();
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["chain"]["events"], early_end, "{report}");
    assert_eq!(report["witness"]["standing"], "shorter", "{report}");
    assert_eq!(report["witness"]["position"], witnessed, "{report}");
    stop(server);

    let (ok, out, err) = run(&["verify"], &data, &tmp);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("shop main: FAILED: {early_end} events, chain intact, but the log {positions}")),
        "{out}"
    );
    assert!(out.contains("shop other: 1 events, chain intact"), "{out}");
    assert!(
        err.contains(&format!("shop main ends at position {early_end}, before its witnessed position {witnessed}")),
        "{err}"
    );

    // Started again, the shop is still refused: its witness was kept, nothing was written.
    let server = Server::start(&data, true);
    let refused = server.client().with_token(OPERATOR).post(&format!("{SHOP}/orders"), &order("C-1"));
    assert_eq!(refused.status, 503);
    assert!(message(&refused).contains(&positions), "{}", message(&refused));
    stop(server);
}

/// The issue's other case: the last bytes of sled's file cut off, which sled opens as a
/// shorter log. `verify` fails naming the positions, and `serve` refuses the shop.
#[test]
fn a_sled_file_cut_short_is_caught_by_the_witness() {
    let dir = temp_dir();
    let (data, tmp) = (dir.path().join("data"), dir.path().join("tmp"));
    std::fs::create_dir(&tmp).expect("created");
    let witnessed = served_day(&data, 30, "A", true);
    let db = layout::log_dir(&data).join("db");
    let length = std::fs::metadata(&db).expect("the log file").len();
    let mut caught = None;
    for cut in [256, 512, 1024, 2048, 4096] {
        let trial = dir.path().join(format!("cut-{cut}"));
        copy_dir(&data, &trial);
        let file = std::fs::OpenOptions::new().write(true).open(layout::log_dir(&trial).join("db")).expect("opens");
        file.set_len(length.saturating_sub(cut)).expect("cut");
        let (ok, out, err) = run(&["verify"], &trial, &tmp);
        assert!(!ok, "a log cut by {cut} bytes of {length} does not verify: {out}");
        if out.contains("before its witnessed position") {
            caught = Some((trial, out, err));
            break;
        }
    }
    let (trial, out, err) = caught.expect("a cut that sled opens as a shorter log");
    let actual: u64 = out
        .split("shop main: FAILED: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|events| events.parse().ok())
        .unwrap_or_else(|| panic!("the events verified: {out}"));
    assert!(actual < witnessed, "{out}");
    assert!(err.contains(&format!("before its witnessed position {witnessed}")), "{err}");

    let server = Server::start(&trial, true);
    let refused = server.client().with_token(OPERATOR).post(&format!("{SHOP}/orders"), &order("B-0"));
    assert_eq!(refused.status, 503);
    let said = message(&refused);
    assert!(said.contains(&format!("ends at position {actual}, before its witnessed position {witnessed}")), "{said}");
    stop(server);
    let (ok, again, _) = run(&["verify"], &trial, &tmp);
    assert!(!ok && again.contains(&format!("FAILED: {actual} events")), "nothing was appended: {again}");
}

/// `verify` (and every command that reads the store, and `serve`) refuses a `log/db` that
/// is not sled's, naming it, and leaves its bytes as they were.
#[test]
fn a_log_file_that_is_not_a_sled_database_is_refused_and_left_unchanged() {
    let dir = temp_dir();
    let (data, tmp) = (dir.path().join("data"), dir.path().join("tmp"));
    std::fs::create_dir(&tmp).expect("created");
    assert!(crate::support::emporium(&["demo"], &data).0);
    let db = layout::log_dir(&data).join("db");
    std::fs::write(&db, b"garbage!").expect("written");
    let reads: [&[&str]; 6] = [
        &["verify"],
        &["replay"],
        &["replay", "--check"],
        &["audit", "--order", "O-1001"],
        &["export", "--format", "jsonl"],
        &["serve", "--listen", "127.0.0.1:0"],
    ];
    for args in reads {
        let (ok, _, err) = run(args, &data, &tmp);
        assert!(!ok, "{args:?}");
        assert!(err.contains(&format!("{} is not a file of a sled database", db.display())), "{args:?}: {err}");
        assert_eq!(std::fs::read(&db).expect("read"), b"garbage!", "{args:?} changed the file");
    }
    let left: Vec<_> = std::fs::read_dir(&tmp).expect("listed").collect();
    assert!(left.is_empty(), "nothing is left in the temporary directory: {left:?}");
}

/// `verify`, `replay` (with `--check`), `audit` and `export` change no byte of the data
/// directory, and leave no copy behind.
#[test]
fn the_reading_commands_change_nothing_in_the_data_directory() {
    let dir = temp_dir();
    let (data, tmp) = (dir.path().join("data"), dir.path().join("tmp"));
    std::fs::create_dir(&tmp).expect("created");
    served_day(&data, 10, "A", true);
    assert!(layout::witness_path(&data).is_file(), "the engine wrote its witness");
    let before = listing(&data);
    assert!(before.keys().any(|p| p.starts_with("snapshots")), "{before:?}");
    let reads: [&[&str]; 5] = [
        &["verify"],
        &["replay"],
        &["replay", "--check"],
        &["audit", "--order", "A-3"],
        &["export", "--format", "jsonl"],
    ];
    for args in reads {
        let (ok, out, err) = run(args, &data, &tmp);
        assert!(ok, "{args:?}: {out}\n{err}");
        assert_eq!(listing(&data), before, "{args:?} changed the data directory");
        let left: Vec<_> = std::fs::read_dir(&tmp).expect("listed").collect();
        assert!(left.is_empty(), "{args:?} left its copy behind: {left:?}");
    }
    let (_, verified, _) = run(&["verify"], &data, &tmp);
    assert!(verified.contains("shop main: 12 events, chain intact, witnessed at 12, head "), "{verified}");
    let (_, checked, _) = run(&["replay", "--check"], &data, &tmp);
    assert!(checked.contains("every build agrees"), "{checked}");
}

/// While `serve` holds the store, `verify` says to ask the server, whose verification
/// route answers an auditor.
#[test]
fn while_serving_verify_points_to_the_route_that_answers_an_auditor() {
    let dir = temp_dir();
    let (data, tmp) = (dir.path().join("data"), dir.path().join("tmp"));
    std::fs::create_dir(&tmp).expect("created");
    let server = Server::start(&data, true);
    let client = server.client().with_token(OPERATOR);
    set_up(&client);
    let mut last = 0;
    for n in 0..5 {
        last = place(&client, &format!("A-{n}"));
    }
    let (ok, out, err) = run(&["verify"], &data, &tmp);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("in use") && err.contains("GET /v1/shops/{shop}/verify"), "{err}");

    let auditor = server.client().with_token(AUDITOR);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let report = loop {
        let answer = auditor.get(&format!("{SHOP}/verify"));
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        let report = answer.json();
        // The witness is written within a second of a position's becoming durable.
        if report["witness"]["position"] == last || std::time::Instant::now() > deadline {
            break report;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["chain"]["intact"], true, "{report}");
    assert_eq!(report["chain"]["events"], last, "{report}");
    assert_eq!(report["witness"]["standing"], "agrees", "{report}");
    assert_eq!(report["witness"]["position"], last, "{report}");
    assert_eq!(report["witness"]["hash"], report["chain"]["head"], "{report}");
    assert_eq!(server.client().get(&format!("{SHOP}/verify")).status, 401, "a token is needed");
    let unknown = auditor.get("/v1/shops/nowhere/verify");
    assert_eq!(unknown.status, 404);
    let described = auditor.get("/v1/openapi.json").json();
    assert!(described["paths"]["/v1/shops/{shop}/verify"]["get"].is_object(), "documented");
    stop(server);
    let (ok, out, err) = run(&["verify"], &data, &tmp);
    assert!(ok && out.contains(&format!("witnessed at {last}")), "{out}\n{err}");
}

/// A sled file cut short so that sled cannot read it: the error names the file.
#[test]
fn a_sled_file_that_cannot_be_read_is_named_in_the_error() {
    let dir = temp_dir();
    let (data, tmp) = (dir.path().join("data"), dir.path().join("tmp"));
    std::fs::create_dir(&tmp).expect("created");
    served_day(&data, 5, "A", true);
    // Opened again, sled writes a snapshot of its own that points into the file.
    served_day(&data, 5, "B", false);
    let log = layout::log_dir(&data);
    let snap = std::fs::read_dir(&log)
        .expect("listed")
        .any(|e| e.expect("entry").file_name().to_string_lossy().starts_with("snap."));
    assert!(snap, "sled wrote its snapshot: {:?}", listing(&log).keys());
    let db = log.join("db");
    std::fs::OpenOptions::new().write(true).open(&db).expect("opens").set_len(100).expect("cut");
    for args in [&["verify"][..], &["serve", "--listen", "127.0.0.1:0"]] {
        let (ok, _, err) = run(args, &data, &tmp);
        assert!(!ok, "{args:?}");
        assert!(err.contains(&format!("database file {}", db.display())), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
