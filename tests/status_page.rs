//! The status page (`GET /status` on the admin listener) in a real browser: headless Chromium
//! loads it from a Juggler under load twice, about 2 s apart, runs its JavaScript (which polls
//! `/status.json`) and dumps the rendered DOM. Both dumps must show the three backends, and each
//! backend's request count must have grown between them: the page draws live data, not a template.
//! The pools reserve a slot for high-priority routes, and each row must say so where it shows the
//! pool's size and limit.
//!
//! Chromium is required, not optional: without it this test fails and says how to install it
//! (`.ci/run` installs it on a fresh machine).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use juggler::table::{BalancePolicy, Protection, Settings};
use juggler_testkit::{addrs_of, protected_table, three_backends, Client, TempDir, TestJuggler};

/// The token the mutating admin endpoints want; the page only reads here.
const TOKEN: &str = "status-page-test-token";

/// Longest one Chromium run may take before it is killed and the test fails.
const BROWSER_LIMIT: Duration = Duration::from_secs(25);

/// Slots of each backend's pool of 2 kept for high-priority routes: the row must show them.
const RESERVED: usize = 1;

/// Virtual time Chromium gives the page's scripts before dumping the DOM: enough for the first
/// poll of `/status.json` and two more.
const PAGE_BUDGET_MS: u32 = 2_500;

#[juggler_testkit::test]
async fn the_status_page_shows_the_backends_with_live_numbers_in_a_real_browser() {
    let browser = chromium();
    let backends = three_backends().await;
    let addresses: Vec<String> = addrs_of(&backends).iter().map(|a| a.to_string()).collect();
    let servers: Vec<_> = addrs_of(&backends)
        .into_iter()
        .map(|addr| (addr, 1))
        .collect();
    let protection = Protection {
        reserved: RESERVED,
        ..Protection::OFF
    };
    let routes = protected_table(
        &servers,
        2,
        BalancePolicy::RoundRobin,
        protection,
        Settings::DEFAULT,
    );
    let juggler = TestJuggler::start_with_admin(routes, TOKEN).await;
    let url = format!("http://{}/status", juggler.admin_addr());

    // Background load: four keep-alive clients, a request every few milliseconds each.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (stop, answered, addr) = (Arc::clone(&stop), Arc::clone(&answered), juggler.addr);
        load.spawn(async move {
            let mut client = Client::connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let answer = client.get("/").await.expect("a request under load failed");
                assert_eq!(answer.status, 200);
                answered.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        });
    }

    let first = rendered_dom(&browser, &url).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = rendered_dom(&browser, &url).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = load.join_next().await {
        done.unwrap();
    }

    for dom in [&first, &second] {
        assert!(
            dom.contains("live ·"),
            "the page does not say it is live (disconnected from /status.json?):\n{dom}"
        );
        assert!(
            dom.contains(env!("CARGO_PKG_VERSION")),
            "no version in the header:\n{dom}"
        );
    }
    for address in &addresses {
        let before = requests_shown(&first, address);
        let after = requests_shown(&second, address);
        println!("{address}: the page showed {before} requests, then {after}");
        assert_eq!(backend_state(&second, address), "up", "{address}");
        assert_eq!(
            row_attribute(&second, address, "data-reserved"),
            RESERVED.to_string(),
            "{address}: the row does not carry the pool's reserved slots"
        );
        let shown = format!("open · {RESERVED} reserved");
        assert!(
            row_html(&second, address).contains(&shown),
            "{address}: the row does not show {shown:?}:\n{}",
            row_html(&second, address)
        );
        assert!(
            after > before,
            "{address}: the request count did not move between the two loads ({before} → {after})"
        );
    }
    println!(
        "{} requests answered under load",
        answered.load(Ordering::Relaxed)
    );
}

/// The value of attribute `name` in the opening tag of the backend row for `address`.
fn row_attribute(dom: &str, address: &str, name: &str) -> String {
    let marker = format!("data-address=\"{address}\"");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no row for backend {address} in the rendered page:\n{dom}"));
    let tag_start = dom[..start].rfind('<').unwrap_or(0);
    let tag_end = start + dom[start..].find('>').unwrap_or(dom.len() - start);
    let tag = &dom[tag_start..tag_end];
    let key = format!("{name}=\"");
    let value_start = tag
        .find(&key)
        .unwrap_or_else(|| panic!("the row of {address} has no {name}: {tag}"))
        + key.len();
    let value_len = tag[value_start..].find('"').unwrap_or(0);
    tag[value_start..value_start + value_len].to_owned()
}

/// The backend row for `address`, from its opening tag to its end.
fn row_html<'a>(dom: &'a str, address: &str) -> &'a str {
    let marker = format!("data-address=\"{address}\"");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no row for backend {address} in the rendered page:\n{dom}"));
    let end = start + dom[start..].find("</tr>").unwrap_or(dom.len() - start);
    &dom[start..end]
}

fn requests_shown(dom: &str, address: &str) -> u64 {
    let shown = row_attribute(dom, address, "data-requests");
    shown
        .parse()
        .unwrap_or_else(|_| panic!("{address}: data-requests is {shown:?}, not a number"))
}

fn backend_state(dom: &str, address: &str) -> String {
    row_attribute(dom, address, "data-state")
}

/// The headless Chromium to run: `$JUGGLER_CHROMIUM`, else the first of the usual names on PATH.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("JUGGLER_CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "this test needs headless Chromium and found none on PATH (chromium, chromium-browser, \
         google-chrome); install it with `apt-get install -y chromium` (.ci/run does), or point \
         JUGGLER_CHROMIUM at one"
    );
}

/// Loads `url` in a fresh headless Chromium, lets its scripts run for [`PAGE_BUDGET_MS`] of
/// virtual time, and returns the DOM as the page left it.
async fn rendered_dom(browser: &Path, url: &str) -> String {
    let (browser, url) = (browser.to_owned(), url.to_owned());
    tokio::task::spawn_blocking(move || dump_dom(&browser, &url))
        .await
        .unwrap()
}

fn dump_dom(browser: &Path, url: &str) -> String {
    let dir = TempDir::new("status-page");
    let out = dir.file("dom.html");
    let err = dir.file("chromium.log");
    let started = Instant::now();
    let mut child = std::os::unix::process::CommandExt::process_group(
        Command::new(browser)
            .arg("--headless")
            // Tests run as root in CI, where Chromium's sandbox refuses to start.
            .arg("--no-sandbox")
            .arg("--disable-gpu")
            .arg("--disable-dev-shm-usage")
            .arg("--no-first-run")
            .arg(format!("--user-data-dir={}", dir.file("profile").display()))
            .arg(format!("--virtual-time-budget={PAGE_BUDGET_MS}"))
            .arg("--dump-dom")
            .arg(url)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap()),
        0,
    )
    .spawn()
    .unwrap_or_else(|error| panic!("cannot start {}: {error}", browser.display()));
    // Its own process group, so that the browser's helper processes go with it however it ends.
    let group = ProcessGroup(child.id() as i32);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BROWSER_LIMIT {
            drop(group);
            let _ = child.wait();
            panic!(
                "{} did not finish loading {url} within {BROWSER_LIMIT:?}; its log:\n{}",
                browser.display(),
                tail(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(group);
    let dom = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        status.success() && dom.contains("</html>"),
        "{} could not render {url} ({status}); its log:\n{}",
        browser.display(),
        tail(&err)
    );
    println!("chromium rendered {url} in {:?}", started.elapsed());
    dom
}

/// The last lines of a log file, for a failure message.
fn tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Kills a whole process group when dropped.
struct ProcessGroup(i32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a negative pid signals the group; no memory is involved.
        unsafe {
            libc::kill(-self.0, libc::SIGKILL);
        }
    }
}
