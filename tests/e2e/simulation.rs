//! A seeded fault simulation: the reference order flow on the real binary,
//! with faults chosen by a seed (a plugin's publish limit, traps and
//! retries, worker panics, hot swaps mid-flow, kill -9 and restart, CPU
//! hogs, strict ordering and several workers), then checked as a whole:
//! the audit is clean, every order accepted is in the log once and has
//! exactly one inventory follow-up, no dead letters, analytics' totals are
//! the orders', and inventory's stock is its start less what it reserved.
//!
//! The test command runs a few short seeds; `scripts/simulate.sh [SEEDS]
//! [SECS]` runs many (`PLUGBUS_SIM_SEEDS` = `N` or `A..B`, `PLUGBUS_SIM_SECS`
//! per seed). A failing seed names the command that replays it.

use std::collections::HashMap;
use std::ffi::OsString;

use plugbus_e2e::Hogs;

use super::accounting::{one_follow_up_each_and_no_dead_letters, whole_log};
use super::*;

/// The most orders one seed posts: its plugins finish them well within
/// [`SETTLE`] even at the lowest publish limit a seed sets.
const ORDERS_MAX: usize = 8_000;
/// How long the plugins may take to finish, a bound for liveness only.
const SETTLE: Duration = Duration::from_secs(300);

/// The SKUs orders ask for, and their starting stock.
const SKUS: [(&str, u64); 3] = [("widget", 400), ("gadget", 150), ("gizmo", 40)];

/// splitmix64: the same seed, the same run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// In `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True one time in `n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// What one seed runs with.
#[derive(Debug)]
struct Plan {
    inventory_manifest: String,
    env: Vec<(&'static str, String)>,
}

impl Plan {
    fn new(rng: &mut Rng) -> Plan {
        let mut m = String::new();
        let workers = [1, 1, 2, 4][rng.below(4) as usize];
        m.push_str(&format!(
            "concurrency = {workers}\nordering_key = \"subject\"\n"
        ));
        m.push_str("[config]\n");
        for (sku, stock) in SKUS {
            m.push_str(&format!("\"stock.{sku}\" = \"{stock}\"\n"));
        }
        // Attempts enough that injected traps never use them up: the check
        // wants every order handled, not a dead letter.
        m.push_str("[retry]\nmax_attempts = 1000\nbackoff_ms_min = 1\nbackoff_ms_max = 50\n");
        if rng.one_in(3) {
            m.push_str("ordering = \"strict\"\n");
        }
        if rng.one_in(2) {
            let rate = 500 + rng.below(3000);
            m.push_str(&format!("[publish]\nrate_events_per_s_max = {rate}\n"));
        }
        let mut env = Vec::new();
        if rng.one_in(2) {
            env.push((
                "PLUGBUS_FAULT_WORKER_PANIC",
                format!("inventory:{}", 3 + rng.below(40)),
            ));
        }
        if rng.one_in(2) {
            env.push((
                "PLUGBUS_FAULT_CALL_TRAP",
                format!("inventory:{}", 2 + rng.below(20)),
            ));
        }
        Plan {
            inventory_manifest: m,
            env,
        }
    }

    fn start(&self, data: &TestDir) -> TestHost {
        let files = [
            PluginFile::Wasm("email", artifacts::EMAIL),
            PluginFile::Wasm("inventory", artifacts::INVENTORY),
            PluginFile::Manifest("inventory", &self.inventory_manifest),
            PluginFile::Wasm("analytics", artifacts::ANALYTICS),
        ];
        let env: Vec<(&str, OsString)> = self
            .env
            .iter()
            .map(|(k, v)| (*k, OsString::from(v)))
            .collect();
        let env: Vec<(&str, &std::ffi::OsStr)> =
            env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
        TestHost::start_with_env(BIN, &files, &["--data", &data.arg()], &env)
            .unwrap_or_else(|e| panic!("host did not start: {e}"))
    }
}

/// An order of the simulation: its id, SKU, quantity and total.
fn sim_order(i: u64, rng: &mut Rng) -> (Value, String, u64, u64) {
    let (sku, _) = SKUS[rng.below(SKUS.len() as u64) as usize];
    let qty = 1 + rng.below(3);
    let total = 100 * qty;
    let id = format!("s-{i}");
    let event = json!({"specversion": "1.0", "id": id, "source": "/sim",
        "type": "order.placed", "subject": id,
        "data": {"order_id": id, "customer": "sim@example.com",
                 "items": [{"sku": sku, "qty": qty}], "total_cents": total}});
    (event, sku.to_string(), qty, total)
}

/// Post `batch` until it is accepted (a host being restarted refuses
/// nothing it accepted; the same ids are stored once).
fn post_until_accepted(h: &TestHost, batch: &[Value]) {
    let until = Instant::now() + WAIT;
    loop {
        let (status, body) = h.post(
            "/v1/events",
            Some("application/cloudevents-batch+json"),
            &[],
            Value::Array(batch.to_vec()).to_string().as_bytes(),
        );
        if status == 202 {
            return;
        }
        assert!(Instant::now() < until, "orders refused: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `bytes` (a component) with a custom section that makes it a new
/// version of the same code.
fn new_version(bytes: &[u8], n: u64) -> Vec<u8> {
    let name = b"plugbus-sim";
    let payload = n.to_le_bytes();
    let mut out = bytes.to_vec();
    out.push(0);
    out.push((1 + name.len() + payload.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

/// Wait until every plugin is done: the audit shows nothing pending and
/// nothing unaccounted.
fn settled(h: &TestHost) -> Value {
    let last = std::cell::RefCell::new(Value::Null);
    let done = h.wait_until("every plugin to finish", SETTLE, |h| {
        let Ok(audit) = h.get("/v1/audit") else {
            return false;
        };
        let finished = audit["plugins"]
            .as_array()
            .is_some_and(|p| p.len() == 3 && p.iter().all(|a| a["pending"] == 0));
        *last.borrow_mut() = audit;
        finished
    });
    let last = last.into_inner();
    if let Err(e) = done {
        panic!("{e}; last audit: {last:#}");
    }
    last
}

/// Run one seed for about `secs` of faults, then check the outcome.
fn run_seed(seed: u64, secs: u64) {
    let mut rng = Rng(seed);
    let plan = Plan::new(&mut rng);
    eprintln!("simulation seed {seed}: {plan:?}");
    let data = TestDir::new(&format!("sim-{seed}"));
    let mut h = plan.start(&data);
    let mut hogs: Option<Hogs> = None;
    let mut orders: Vec<(String, u64, u64)> = Vec::new();
    let mut versions = 0;
    let mut kills = 0;
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        match rng.below(10) {
            0 if kills < 3 => {
                kills += 1;
                h.kill9();
                h = plan.start(&data);
            }
            1 => {
                versions += 1;
                let bytes = std::fs::read(artifacts::INVENTORY).expect("inventory.wasm");
                deploy(
                    h.plugin_dir(),
                    "inventory.wasm",
                    &new_version(&bytes, versions),
                );
            }
            2 => {
                hogs = match hogs {
                    Some(_) => None,
                    None => Hogs::start().ok(),
                }
            }
            _ if orders.len() >= ORDERS_MAX => {}
            _ => {
                let n = 20 + rng.below(300);
                let start = orders.len() as u64;
                let batch: Vec<Value> = (start..start + n)
                    .map(|i| {
                        let (event, sku, qty, total) = sim_order(i, &mut rng);
                        orders.push((sku, qty, total));
                        event
                    })
                    .collect();
                post_until_accepted(&h, &batch);
            }
        }
        // Faults and orders spread over the seed's time.
        std::thread::sleep(Duration::from_millis(20 + rng.below(200)));
    }
    drop(hogs);
    let audit = settled(&h);
    check(&h, &orders, &audit);
    eprintln!(
        "simulation seed {seed}: {} orders, {kills} kill -9, {versions} new versions: accounted",
        orders.len()
    );
    h.stop().expect("stops");
}

/// Every order accounted for, once, and the plugins' state agrees.
fn check(h: &TestHost, orders: &[(String, u64, u64)], audit: &Value) {
    assert_eq!(audit["unaccounted"], 0, "{audit:#}");
    let log = whole_log(h);
    let mut placed: HashMap<&str, usize> = HashMap::new();
    let mut reserved: HashMap<String, u64> = HashMap::new();
    for e in &log {
        let t = e["type"].as_str().unwrap_or_default();
        if t == "order.placed" {
            *placed
                .entry(e["id"].as_str().unwrap_or_default())
                .or_default() += 1;
        } else if t == "inventory.reserved" {
            for item in e["data"]["items"].as_array().into_iter().flatten() {
                let sku = item["sku"].as_str().unwrap_or_default().to_string();
                *reserved.entry(sku).or_default() += item["qty"].as_u64().unwrap_or(0);
            }
        }
    }
    assert_eq!(
        placed.len(),
        orders.len(),
        "every order accepted is in the log"
    );
    assert!(placed.values().all(|&n| n == 1), "each once");
    let ids: HashSet<&str> = placed.keys().copied().collect();
    one_follow_up_each_and_no_dead_letters(h, &log, &ids);
    let kv = |key: &str| -> Value {
        h.get(&format!("/v1/plugins/{key}"))
            .map(|v| v["value"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(kv("analytics/kv/orders"), json!(orders.len()));
    let revenue: u64 = orders.iter().map(|(_, _, total)| total).sum();
    assert_eq!(kv("analytics/kv/revenue_cents"), json!(revenue));
    for (sku, start) in SKUS {
        let took = reserved.get(sku).copied().unwrap_or(0);
        let kept = kv(&format!("inventory/kv/stock.{sku}"));
        if took == 0 {
            assert!(kept.is_null() || kept == json!(start), "{sku}: {kept}");
        } else {
            assert_eq!(
                kept,
                json!(start - took),
                "{sku}: stock is its start less what was reserved"
            );
        }
    }
}

/// The seeds to run: `PLUGBUS_SIM_SEEDS` (`N` or `A..B`, B excluded), by
/// default 1..4.
fn seeds() -> std::ops::Range<u64> {
    let spec = std::env::var("PLUGBUS_SIM_SEEDS").unwrap_or_else(|_| "1..4".into());
    match spec.split_once("..") {
        Some((a, b)) => a.parse().unwrap_or(1)..b.parse().unwrap_or(4),
        None => {
            let n = spec.parse().unwrap_or(1);
            n..n + 1
        }
    }
}

#[test]
fn the_order_flow_under_seeded_faults_accounts_for_every_order() {
    let secs: u64 = std::env::var("PLUGBUS_SIM_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    for seed in seeds() {
        let run = std::panic::catch_unwind(|| run_seed(seed, secs));
        if let Err(e) = run {
            eprintln!(
                "simulation seed {seed} failed; replay it with: scripts/simulate.sh {seed} {secs}"
            );
            std::panic::resume_unwind(e);
        }
    }
}
