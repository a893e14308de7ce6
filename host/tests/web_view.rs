//! The web view (`/` of the admin port) in a real browser: headless
//! Chromium loads the page of a real host pair's hosts (real binary, real
//! broker, SQLite store) while records flow, runs its script, and the DOM
//! it renders must show the units and this host leading them; after kill -9
//! of the active, the survivor's page must show it leading at a higher
//! epoch, with the takeover listed. A screenshot of the survivor's page is
//! saved under the cargo target's tmp dir (the path is printed).
//!
//! Chromium is Debian's `chromium` (`scripts/install-deps.sh --test`; or
//! `CHROMIUM=/path/to/it`). Where it is missing the test says it is
//! skipped, and fails when `CI` is set.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::admin::{admin_address, get};
use common::stderr;
use common::world::{deploy, exclusive, wait_until, World, RUN_BOUND};
use logstream_host::pipeline::kafka;

const PARTITIONS: i32 = 2;
/// Records per `gen-logs` round of the feeder.
const RECORDS_PER_ROUND: u64 = 200;
/// Virtual time the page gets to poll `/status` and render (it polls every
/// second): several polls, so records/s has successive samples.
const VIRTUAL_TIME_BUDGET_MS: u64 = 5_000;

/// The browser, or `None` after saying the test is skipped; panics when
/// `CI` is set and there is none.
fn chromium_or_skip() -> Option<PathBuf> {
    let binary = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"));
    let runs = Command::new(&binary)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if runs {
        return Some(binary);
    }
    let reason = format!(
        "{} cannot be run: install Chromium with scripts/install-deps.sh --test (Debian: apt-get install chromium) or set CHROMIUM to its path",
        binary.display()
    );
    assert!(std::env::var_os("CI").is_none(), "{reason}");
    eprintln!("skipped: {reason}");
    None
}

/// Headless Chromium on `url`, with a profile of its own in `dir`, after
/// the page's script had `VIRTUAL_TIME_BUDGET_MS` of (virtual) time.
fn chromium(binary: &Path, dir: &Path, url: &str, action: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir_in(dir).unwrap();
    let output = Command::new(binary)
        .args(["--headless", "--disable-gpu", "--no-sandbox"])
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(action)
        .arg(url)
        .output()
        .expect("chromium starts");
    assert!(
        output.status.success(),
        "chromium {action:?} {url}: {}",
        stderr(&output)
    );
    output
}

/// The DOM of `url` once its script ran.
fn rendered_dom(binary: &Path, dir: &Path, url: &str) -> String {
    let output = chromium(binary, dir, url, &["--dump-dom"]);
    String::from_utf8(output.stdout).expect("the DOM is UTF-8")
}

/// The value of attribute `name` in `tag` (one start tag's text).
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// The start tags of the rows whose attribute `name` is `value`.
fn rows<'a>(dom: &'a str, name: &str, value: &str) -> Vec<&'a str> {
    dom.match_indices("<tr ")
        .filter_map(|(at, _)| dom[at..].find('>').map(|end| &dom[at..at + end]))
        .filter(|tag| attribute(tag, name) == Some(value))
        .collect()
}

/// The epoch the page shows unit `unit` led at by this host, failing
/// unless the page shows it leading.
fn shown_leading(dom: &str, unit: &str) -> u64 {
    let rows = rows(dom, "data-unit", unit);
    assert_eq!(rows.len(), 1, "one row for {unit} in the page:\n{dom}");
    assert_eq!(
        attribute(rows[0], "data-role"),
        Some("leader"),
        "{unit} led here, in the page:\n{dom}"
    );
    attribute(rows[0], "data-epoch")
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("no epoch for {unit} in the page:\n{dom}"))
}

/// `/status` of the host at `address`.
fn status(address: std::net::SocketAddr) -> serde_json::Value {
    let (code, body) = get(address, "/status").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Whether every unit of `status` has `role`.
fn all_units(status: &serde_json::Value, role: &str) -> bool {
    let units = status["units"].as_array().unwrap();
    units.len() == PARTITIONS as usize && units.iter().all(|u| u["role"] == role)
}

#[test]
fn the_web_view_shows_the_leaders_and_a_failover_in_a_real_browser() {
    let Some(browser) = chromium_or_skip() else {
        return;
    };
    let _exclusive = exclusive();
    let world = World::new("web-view-");
    kafka::ensure_topics(
        &world.broker.address,
        &[("logs", PARTITIONS), ("pt-out", PARTITIONS)],
    )
    .unwrap();
    let url = world.store_url("s");
    let out = deploy(
        "passthrough",
        &[
            "--name", "pt", "--input", "logs", "--output", "pt-out", "--store", &url,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut hosts = world.hosts("s");
    hosts.start("a");
    let a = admin_address(&hosts.dir, "a", RUN_BOUND);
    wait_until("a to lead every unit", || all_units(&status(a), "leader"));
    hosts.start("b");
    let b = admin_address(&hosts.dir, "b", RUN_BOUND);
    wait_until("b to stand by for every unit", || {
        all_units(&status(b), "passive")
    });

    // Records flow for the rest of the test.
    let flowing = Arc::new(AtomicBool::new(true));
    let feeder = {
        let brokers = world.broker.address.clone();
        let flowing = flowing.clone();
        std::thread::spawn(move || {
            while flowing.load(Ordering::Relaxed) {
                let output = Command::new(env!("CARGO_BIN_EXE_logstream"))
                    .args(["gen-logs", "--count", &RECORDS_PER_ROUND.to_string()])
                    .args(["--partitions", &PARTITIONS.to_string()])
                    .args(["--topic", "logs", "--brokers", &brokers])
                    .output()
                    .unwrap();
                assert!(output.status.success(), "{}", stderr(&output));
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let processed = |address, unit: usize| status(address)["units"][unit]["records_in"].as_u64();
    wait_until("a to process records of every unit", || {
        (0..PARTITIONS as usize).all(|u| processed(a, u) > Some(0))
    });

    let dom = rendered_dom(&browser, world.dir.path(), &format!("http://{a}/"));
    assert!(
        dom.contains("<span id=\"host-id\">a</span>"),
        "the page names host a:\n{dom}"
    );
    let before: Vec<u64> = (0..PARTITIONS)
        .map(|p| shown_leading(&dom, &format!("pt/{p}")))
        .collect();
    assert!(before.iter().all(|e| *e >= 1), "{before:?}");

    hosts.kill9("a");
    wait_until("b to lead every unit", || all_units(&status(b), "leader"));
    wait_until("b to process records of every unit", || {
        (0..PARTITIONS as usize).all(|u| processed(b, u) > Some(0))
    });
    let page = format!("http://{b}/");
    let dom = rendered_dom(&browser, world.dir.path(), &page);
    assert!(
        dom.contains("<span id=\"host-id\">b</span>"),
        "the page names host b:\n{dom}"
    );
    for p in 0..PARTITIONS {
        let unit = format!("pt/{p}");
        let epoch = shown_leading(&dom, &unit);
        assert!(
            epoch > before[p as usize],
            "{unit}: epoch {epoch} on b, {} on a",
            before[p as usize]
        );
        let takeovers = rows(&dom, "data-takeover", &unit);
        assert!(
            takeovers
                .iter()
                .any(|t| attribute(t, "data-epoch") == Some(&epoch.to_string())),
            "b's takeover of {unit} at epoch {epoch} listed in the page:\n{dom}"
        );
    }

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web_view_after_failover.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        &browser,
        world.dir.path(),
        &page,
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,1100",
        ],
    );
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 0),
        "no screenshot at {}",
        screenshot.display()
    );
    eprintln!("screenshot of b's page: {}", screenshot.display());
    flowing.store(false, Ordering::Relaxed);
    feeder.join().unwrap();
}
