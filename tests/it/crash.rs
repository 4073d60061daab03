//! Crash safety: acknowledged means durable, whenever the process dies.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use emporium::engine::{Engine, EngineConfig, SystemClock};
use emporium::log::store::{EventStore, SledStore};
use emporium::{ShopId, State};

use crate::support::temp_dir;

/// A small deterministic generator, seeded per run and printed for reproduction.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// One acknowledged command as the drill printed it.
struct Ack {
    command_id: String,
    first: u64,
    last: u64,
}

fn parse_ack(line: &[u8]) -> Option<Ack> {
    // Only whole lines count: a line cut by the kill has no newline.
    let line = std::str::from_utf8(line.strip_suffix(b"\n")?).ok()?;
    let mut words = line.split(' ');
    let (Some("ack"), Some(id), Some(first), Some(last), None) =
        (words.next(), words.next(), words.next(), words.next(), words.next())
    else {
        return None;
    };
    Some(Ack { command_id: id.to_owned(), first: first.parse().ok()?, last: last.parse().ok()? })
}

const CYCLES: usize = 20;

#[test]
fn every_command_acknowledged_before_a_sigkill_is_in_the_log() {
    let dir = temp_dir();
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
    println!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    let shop = ShopId::main();
    for cycle in 0..CYCLES {
        let mut child = Command::new(env!("CARGO_BIN_EXE_emporium"))
            .args(["drill", "--tag", &format!("c{cycle}"), "--data"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the drill starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let kill_after = 1 + rng.below(600);
        let mut acks = Vec::new();
        let mut line = Vec::new();
        let mut killed = false;
        loop {
            line.clear();
            if stdout.read_until(b'\n', &mut line).expect("readable") == 0 {
                break;
            }
            if let Some(ack) = parse_ack(&line) {
                acks.push(ack);
            }
            if !killed && acks.len() as u64 >= kill_after {
                child.kill().expect("SIGKILL");
                killed = true;
            }
        }
        child.wait().expect("reaped");
        assert!(killed, "cycle {cycle}: the drill ended before it was killed (seed {seed})");

        runtime.block_on(async {
            let store = SledStore::open(&emporium::log::layout::log_dir(dir.path())).expect("reopens after the kill");
            let report = store.verify(&shop).await.expect("the log verifies after the kill");
            assert_eq!(store.last_position(&shop).await, Ok(report.events));
            for ack in &acks {
                assert!(ack.first >= 1 && ack.last >= ack.first && ack.last <= report.events, "cycle {cycle}");
                let count = (ack.last - ack.first + 1) as usize;
                let events = store.read_from(&shop, ack.first - 1, count).await.expect("readable");
                assert_eq!(events.len(), count, "cycle {cycle}: {} lost (seed {seed})", ack.command_id);
                for (event, position) in events.iter().zip(ack.first..) {
                    assert_eq!(event.position, position);
                    assert_eq!(event.command_id.as_str(), ack.command_id, "cycle {cycle} (seed {seed})");
                }
            }
        });
    }
    runtime.block_on(async {
        let store = Arc::new(SledStore::open(&emporium::log::layout::log_dir(dir.path())).expect("reopens"));
        let engine = Engine::open(store, Arc::new(SystemClock), EngineConfig::default()).await.expect("recovers");
        let state = engine.read(&shop, State::clone).await.expect("served");
        state.check_invariants();
        assert!(state.orders().count() > CYCLES);
    });
}
