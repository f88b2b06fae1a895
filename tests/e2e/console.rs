//! The console in a real browser: headless Debian chromium through
//! chromedriver (WebDriver, fantoccini), against the real binary with the
//! reference plugins. Skipped, with the reason printed, when chromedriver
//! is not installed (`scripts/test.sh` installs it). Screenshots go to
//! `$CARGO_TARGET_TMPDIR/console-shots/`, with `first-render.json`.

use super::*;
use fantoccini::{Client, ClientBuilder, Locator};
use plugbus_e2e::browser::Chromedriver;

/// How long the page may take to show something: liveness only.
const PAGE_WAIT: Duration = Duration::from_secs(120);

fn shots() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-shots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

async fn browser(driver: &Chromedriver) -> Client {
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(driver.capabilities())
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("no browser session: {e}"))
}

async fn wait_css(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("`{css}` never appeared: {e}"))
}

async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.map_or(0, |v| v.len())
}

/// Wait until `css` matches `n` elements.
async fn wait_count(c: &Client, css: &str, n: usize) {
    let deadline = Instant::now() + PAGE_WAIT;
    while count(c, css).await != n {
        assert!(
            Instant::now() < deadline,
            "`{css}` never matched {n} elements"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until the element at `css` says `text`.
async fn wait_text(c: &Client, css: &str, text: &str) {
    wait_text_that(c, css, text, |t| t == text).await;
}

/// Wait until what the element at `css` says passes `ok` (`what` it
/// should say, for the failure).
async fn wait_text_that(c: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let now = match c.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => "(not there)".into(),
        };
        if ok(&now) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{css}` never said {what}; it says {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn shot(c: &Client, name: &str) {
    if let Ok(png) = c.screenshot().await {
        let _ = std::fs::write(shots().join(format!("{name}.png")), png);
    }
}

async fn errors(c: &Client) -> Vec<String> {
    let v = c
        .execute("return window.__errors || ['no error hook'];", vec![])
        .await
        .expect("read the page's errors");
    serde_json::from_value(v).unwrap_or_default()
}

async fn go(c: &Client, url: &str, page: &str) {
    c.goto(&format!("{url}/console/#/{page}"))
        .await
        .expect("goto");
    wait_css(
        c,
        &format!(
            "main[data-page=\"{}\"]",
            page.split(['/', '?']).next().unwrap_or(page)
        ),
    )
    .await;
}

fn run<F: std::future::Future<Output = ()>>(test: impl FnOnce(Chromedriver) -> F) {
    let driver = match Chromedriver::start() {
        Ok(Some(d)) => d,
        Ok(None) => {
            eprintln!("SKIPPED: chromium and chromedriver are not installed (apt-get install chromium chromium-driver; scripts/test.sh does)");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(test(driver));
}

#[test]
fn an_order_shows_in_the_tail_the_flow_graph_and_its_trace() {
    run(|driver| async move {
        let h = host(&order_flow(), &[]);
        let c = browser(&driver).await;
        go(&c, &h.url, "overview").await;
        wait_css(&c, "body[data-ready]").await;
        wait_css(&c, "#overview-plugins tr[data-plugin=\"inventory\"]").await;
        let first_render = c
            .execute(
                "const n = performance.getEntriesByType('navigation')[0]; return {first_render_ms: window.__firstRender, dom_content_loaded_ms: n.domContentLoadedEventEnd, transfer_bytes: performance.getEntriesByType('resource').reduce((a, r) => a + r.transferSize, n.transferSize)};",
                vec![],
            )
            .await
            .expect("timings");
        eprintln!("console timings: {first_render}");
        let _ = std::fs::write(shots().join("first-render.json"), first_render.to_string());
        wait_css(&c, "#conn.conn-open").await;
        shot(&c, "overview").await;

        // The live tail shows the order and its follow-up as they commit.
        go(&c, &h.url, "tail").await;
        wait_css(&c, "#conn.conn-open").await;
        let accepted = h
            .publish("order.placed", &order("o-1", "gadget", 1000, 990))
            .expect("order");
        let id = accepted["id"].as_str().expect("id").to_string();
        wait_css(&c, "#tail-rows tr[data-type=\"order.placed\"]").await;
        let follow = wait_css(&c, "#tail-rows tr[data-type=\"inventory.insufficient\"]").await;
        shot(&c, "tail").await;

        // Its chain link opens the trace: two events, each consumer's outcome.
        follow
            .find(Locator::Css("a.trace-link"))
            .await
            .expect("chain link")
            .click()
            .await
            .expect("click");
        wait_count(&c, "#trace .trace-row", 2).await;
        let url = c.current_url().await.expect("url");
        assert!(url.as_str().ends_with(&format!("#/trace/{id}")), "{url}");
        let outcome = |plugin: &str, seq_type: &str| {
            format!("#trace .trace-row[data-type=\"{seq_type}\"] .delivery[data-plugin=\"{plugin}\"][data-outcome=\"handled\"]")
        };
        for plugin in ["inventory", "email", "analytics"] {
            wait_css(&c, &outcome(plugin, "order.placed")).await;
        }
        wait_css(&c, &outcome("email", "inventory.insufficient")).await;
        shot(&c, "trace").await;

        // The flow graph: order.placed → inventory → inventory.insufficient → email.
        go(&c, &h.url, "flow").await;
        for (from, to) in [
            ("topic:order.placed", "plugin:inventory"),
            ("plugin:inventory", "topic:inventory.insufficient"),
            ("topic:inventory.insufficient", "plugin:email"),
        ] {
            wait_css(
                &c,
                &format!("svg#flow-graph g.edge[data-from=\"{from}\"][data-to=\"{to}\"]"),
            )
            .await;
        }
        assert_eq!(count(&c, "svg#flow-graph g.node-plugin").await, 3);
        let revision = c
            .find(Locator::Css("svg#flow-graph"))
            .await
            .expect("graph")
            .attr("data-revision")
            .await
            .expect("revision");
        shot(&c, "flow").await;
        // Clicking a node filters the tail to it.
        c.find(Locator::Css(
            "svg#flow-graph g.node[data-id=\"plugin:inventory\"]",
        ))
        .await
        .expect("inventory node")
        .click()
        .await
        .expect("click");
        wait_css(
            &c,
            "main[data-page=\"tail\"] #tail-plugin[value=\"inventory\"]",
        )
        .await;
        assert!(revision.is_some());

        // Every page renders without an error in the page.
        for page in [
            "overview", "plugins", "dead", "tail", "flow", "catalog", "trace",
        ] {
            go(&c, &h.url, page).await;
            shot(&c, &format!("page-{page}")).await;
        }
        wait_css(&c, "#trace-id").await;
        go(&c, &h.url, "catalog").await;
        wait_css(&c, "#catalog details[data-topic=\"order.placed\"]").await;
        // What was declared beside what was seen: the reference plugins'
        // contracts, each held against the sampled payloads.
        for declared in ["reader:inventory", "reader:email", "reader:analytics"] {
            let row = wait_css(
                &c,
                &format!("#catalog details[data-topic=\"order.placed\"] tr[data-declared=\"{declared}\"]"),
            )
            .await;
            let text = row.html(true).await.expect("row");
            assert!(text.contains("1 of 1 sampled fit"), "{declared}: {text}");
        }
        wait_css(
            &c,
            "#catalog details[data-topic=\"inventory.insufficient\"] tr[data-declared=\"writer:inventory\"]",
        )
        .await;
        // The counts say which events they cover.
        let covers = wait_css(&c, "#catalog-coverage").await;
        let text = covers.text().await.expect("coverage");
        assert!(
            text.starts_with("Counts cover 2 events, sequences 1 to 2"),
            "{text}"
        );
        let errs = errors(&c).await;
        assert!(errs.is_empty(), "the page logged errors: {errs:?}");
        c.close().await.expect("close");
        assert!(h.stop().expect("stops").success());
    });
}

#[test]
fn the_plugins_page_shows_a_plugins_timers_next_due_and_lateness() {
    run(|driver| async move {
        let h = host(&[PluginFile::Wasm("timers", artifacts::TIMERS)], &[]);
        let set = |id: &str, key: &str, after_ms: u64| {
            json!({"specversion": "1.0", "id": id, "source": "/test", "type": "timer.set",
                   "data": {"key": key, "after_ms": after_ms}})
        };
        h.publish_batch(vec![set("far", "far", 3_600_000), set("soon", "soon", 100)]);
        h.wait_until("soon fired", WAIT, |h| {
            h.plugin("timers")
                .is_some_and(|p| p["timers"] == 1 && p["timer_lateness_ms"].is_u64())
        })
        .expect("fired");
        let status = h.plugin("timers").expect("status");
        assert!(status["timer_next_due"].is_string(), "{status}");
        let c = browser(&driver).await;
        go(&c, &h.url, "plugins").await;
        let cell = wait_css(
            &c,
            "#plugins tr[data-plugin=\"timers\"] td.timers[data-next-due][data-late-ms]",
        )
        .await;
        let text = cell.text().await.expect("text");
        assert!(text.contains("next") && text.contains("late"), "{text}");
        shot(&c, "plugins-timers").await;
        let errs = errors(&c).await;
        assert!(errs.is_empty(), "the page logged errors: {errs:?}");
        c.close().await.expect("close");
    });
}

#[test]
fn a_dead_letter_is_redriven_by_a_click_to_a_fixed_build() {
    run(|driver| async move {
        let h = host(&[PluginFile::Wasm("trap", artifacts::TRAP)], &GIVE_UP_FAST);
        let boom = h
            .publish(
                "order.placed",
                &json!({"order_id": "o-2", "customer": "c", "note": "boom", "items": []}),
            )
            .expect("publish");
        h.wait_until("a dead letter", WAIT, |h| {
            dead_count(h, "/v1/dead") == Some(1)
        })
        .expect("dead-lettered");
        let c = browser(&driver).await;
        // The overview counts it.
        go(&c, &h.url, "overview").await;
        wait_text(&c, "#stat-dead .value", "1").await;
        go(&c, &h.url, "dead?plugin=trap").await;
        let row = wait_css(&c, "#dead-list tr[data-plugin=\"trap\"]").await;
        // Inspect it: the event and its error.
        row.find(Locator::Css("a"))
            .await
            .expect("link")
            .click()
            .await
            .expect("click");
        let detail = wait_css(&c, "#dead-detail pre").await;
        let text = detail.text().await.expect("text");
        assert!(text.contains(boom["id"].as_str().expect("id")), "{text}");
        shot(&c, "dead").await;

        // The fix is deployed; re-drive the letter to it from the page.
        let before = h.plugin("trap").expect("trap")["content_hash"].clone();
        deploy(
            h.plugin_dir(),
            "trap.wasm",
            &std::fs::read(artifacts::NOOP).expect("noop"),
        );
        h.wait_until("the fixed build swapped in", WAIT, |h| {
            h.plugin("trap")
                .is_some_and(|p| p["content_hash"] != before)
        })
        .expect("swapped");
        c.find(Locator::Css(
            "#dead-list input[type=checkbox][data-plugin=\"trap\"]",
        ))
        .await
        .expect("checkbox")
        .click()
        .await
        .expect("select");
        c.find(Locator::Css("#dead-redrive"))
            .await
            .expect("button")
            .click()
            .await
            .expect("click");
        wait_css(&c, "dialog[open] #dialog-ok")
            .await
            .click()
            .await
            .expect("confirm");
        h.wait_until("the fixed build to handle it", WAIT, |h| {
            h.count("trap", "handled") == 1
        })
        .expect("re-driven");
        wait_css(&c, "#dead-status").await;
        wait_count(&c, "#dead-list tr[data-plugin=\"trap\"]", 0).await;
        assert_eq!(h.get("/v1/dead").expect("list")["dead_letters"], json!([]));
        shot(&c, "dead-redriven").await;
        let errs = errors(&c).await;
        assert!(errs.is_empty(), "the page logged errors: {errs:?}");
        c.close().await.expect("close");
        assert!(h.stop().expect("stops").success());
    });
}

#[test]
fn in_memory_mode_the_overview_counts_what_failed_for_good_as_dropped() {
    run(|driver| async move {
        let h = host(
            &[PluginFile::Wasm("trap", artifacts::TRAP)],
            &[&["--memory"][..], &GIVE_UP_FAST[..]].concat(),
        );
        h.publish(
            "order.placed",
            &json!({"order_id": "o-3", "customer": "c", "note": "boom", "items": []}),
        )
        .expect("publish");
        let c = browser(&driver).await;
        go(&c, &h.url, "overview").await;
        wait_text(&c, "#stat-dead .value", "1").await;
        wait_text(
            &c,
            "#stat-dead .label",
            "dropped (memory mode keeps no dead letters)",
        )
        .await;
        // The audit needs the log: the card says why it has no number.
        wait_text_that(&c, "#stat-unaccounted .label", "why", |t| {
            t.starts_with("unaccounted: ") && t.len() > 20
        })
        .await;
        let errs = errors(&c).await;
        assert!(errs.is_empty(), "the page logged errors: {errs:?}");
        c.close().await.expect("close");
        assert!(h.stop().expect("stops").success());
    });
}
