//! The web view (`/` of the admin port) in a real browser: headless
//! Chromium loads the page of a real host pair's hosts (real binary, real
//! broker, SQLite store) while records flow, runs its script, and the DOM
//! it renders must show the units and this host leading them; after kill -9
//! of the active, the survivor's page must show it leading at a higher
//! epoch, with the takeover listed. The survivor's page, kept open across
//! the failover, must catch up by itself and chart its records/s; its
//! screenshot is saved under the cargo target's tmp dir (the path is
//! printed). And markup in the strings `/status` reports (failure and
//! corrupt-checkpoint reasons) is rendered as text.
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
use common::world::{exclusive, wait_until, World, RUN_BOUND};

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

/// A page kept open in headless Chromium in real time (the page polls
/// `/status` as it would on an operator's screen), driven over the DevTools
/// protocol on a pipe (`--remote-debugging-pipe`: commands on fd 3, answers
/// on fd 4, each a JSON message ended by a NUL byte).
struct LivePage {
    child: std::process::Child,
    commands: std::fs::File,
    answers: std::sync::mpsc::Receiver<serde_json::Value>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// Bound on one DevTools command.
const DEVTOOLS_BOUND: Duration = Duration::from_secs(30);

impl LivePage {
    fn open(binary: &Path, dir: &Path, url: &str, window: &str) -> LivePage {
        use std::os::fd::FromRawFd;
        use std::os::unix::process::CommandExt;
        // Two pipes, their ends moved to fds 10 and up (clear of 3 and 4,
        // which the child's ends are duplicated onto).
        let pipe = || {
            let mut fds = [0; 2];
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            fds.map(|fd| {
                let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
                assert!(high >= 10);
                unsafe { libc::close(fd) };
                high
            })
        };
        let [to_read, to_write] = pipe();
        let [from_read, from_write] = pipe();
        let profile = tempfile::tempdir_in(dir).unwrap();
        let mut command = Command::new(binary);
        command
            .args(["--headless", "--disable-gpu", "--no-sandbox"])
            .arg("--remote-debugging-pipe")
            .arg(format!("--window-size={window}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(to_read, 3) < 0 || libc::dup2(from_write, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("chromium starts");
        // SAFETY: these fds are ours alone from here on.
        let (commands, answers_file) = unsafe {
            libc::close(to_read);
            libc::close(from_write);
            (
                std::fs::File::from_raw_fd(to_write),
                std::fs::File::from_raw_fd(from_read),
            )
        };
        let (send, answers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut reader = std::io::BufReader::new(answers_file);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop();
                if let Ok(value) = serde_json::from_slice(&message) {
                    if send.send(value).is_err() {
                        return;
                    }
                }
                message.clear();
            }
        });
        let mut page = LivePage {
            child,
            commands,
            answers,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = page.call("Target.createTarget", serde_json::json!({ "url": url }));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = page.call(
            "Target.attachToTarget",
            serde_json::json!({ "targetId": target, "flatten": true }),
        );
        page.session = attached["sessionId"].as_str().unwrap().to_string();
        page
    }

    /// Run `method` (on the page once attached): its result.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        use std::io::Write;
        self.next_id += 1;
        let id = self.next_id;
        let mut message = serde_json::json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = self.session.clone().into();
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        let deadline = std::time::Instant::now() + DEVTOOLS_BOUND;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let answer = self
                .answers
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("chromium did not answer {method}: {e}"));
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// The page's DOM now.
    fn dom(&mut self) -> String {
        let result = self.call(
            "Runtime.evaluate",
            serde_json::json!({
                "expression": "document.documentElement.outerHTML",
                "returnByValue": true
            }),
        );
        result["result"]["value"].as_str().unwrap().to_string()
    }

    /// A PNG of the page to `path`.
    fn screenshot(&mut self, path: &Path) {
        let shot = self.call(
            "Page.captureScreenshot",
            serde_json::json!({ "format": "png" }),
        );
        std::fs::write(path, base64_decode(shot["data"].as_str().unwrap())).unwrap();
    }
}

impl Drop for LivePage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (what DevTools sends binary data as).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=').map(value).collect();
    let mut bytes = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, d)| acc | (u32::from(*d) << (18 - 6 * i)));
        bytes.extend_from_slice(&bits.to_be_bytes()[1..chunk.len()]);
    }
    bytes
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
    world.deploy_passthrough("s", PARTITIONS, PARTITIONS);
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
    // b's page stays open from here, across the failover, as on an
    // operator's screen.
    let mut live = LivePage::open(
        &browser,
        world.dir.path(),
        &format!("http://{b}/"),
        "1280,1100",
    );
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

    // The page open since before the failover caught up by itself, and
    // charts records/s on b since its takeover.
    let mut dom = String::new();
    wait_until(
        "b's open page to show records/s of every unit led there",
        || {
            dom = live.dom();
            (0..PARTITIONS).all(|p| {
                let rows = rows(&dom, "data-unit", &format!("pt/{p}"));
                rows.len() == 1
                    && attribute(rows[0], "data-role") == Some("leader")
                    && attribute(rows[0], "data-records-per-second")
                        .and_then(|r| r.parse::<f64>().ok())
                        .is_some_and(|r| r > 0.0)
            })
        },
    );
    assert!(
        dom.contains("class=\"takeover-mark\""),
        "no takeover in the chart:\n{dom}"
    );
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web_view_after_failover.png");
    let _ = std::fs::remove_file(&screenshot);
    live.screenshot(&screenshot);
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 0),
        "no screenshot at {}",
        screenshot.display()
    );
    eprintln!("screenshot of b's page: {}", screenshot.display());
    flowing.store(false, Ordering::Relaxed);
    feeder.join().unwrap();
}

/// Markup in what `/status` reports (a failure reason quoting a
/// processor's error, a corrupt checkpoint's reason) is shown as text: the
/// page's script inserts no element from it and runs none of it.
#[test]
fn markup_in_status_strings_is_rendered_as_text() {
    let Some(browser) = chromium_or_skip() else {
        return;
    };
    use logstream_host::admin::{Admin, AdminServer};
    use logstream_host::store::checkpoint::{FaultKind, UnusableGeneration};
    const HOSTILE: &str = "<b id=\"injected\">x</b><img src=x onerror=\"document.title='ran'\">";
    let admin = Admin::new("h", "h:1:2");
    admin.processor_failed("pf", HOSTILE);
    let unit = admin.unit("pt", 0);
    unit.failed(HOSTILE, Duration::from_secs(60));
    unit.unusable_checkpoint(&UnusableGeneration {
        generation: 3,
        kind: FaultKind::Corrupt,
        reason: HOSTILE.to_string(),
    });
    let server = AdminServer::start("127.0.0.1:0".parse().unwrap(), admin).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dom = rendered_dom(
        &browser,
        dir.path(),
        &format!("http://{}/", server.address()),
    );
    assert_eq!(rows(&dom, "data-corrupt", "pt/0").len(), 1, "{dom}");
    assert!(
        !dom.contains("<b id=") && !dom.contains("<img"),
        "markup from /status became elements:\n{dom}"
    );
    assert!(
        dom.contains("&lt;b id=\"injected\"&gt;x&lt;/b&gt;"),
        "the reason is shown as text:\n{dom}"
    );
    assert!(
        dom.contains("<title>LogStream host h</title>"),
        "the title was changed:\n{dom}"
    );
}
