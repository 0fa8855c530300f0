//! The console in a real browser: headless Debian chromium driven over WebDriver
//! (chromedriver). A guard sees a refused vehicle on the live lane tile and files a manual
//! release; a supervisor approves it; the barrier opens on the relay simulator; the ledger holds
//! release_request → release_decision → manual_release, in that order.
//!
//! The WebDriver client is the few JSON calls the test needs, over the reqwest the crate
//! already has (see `wd` below). chromium and chromedriver are required: without them the test
//! fails and says how to install them (.ci/run does).

mod support;

use ecogate::api::auth::{Role, UserStore};
use ecogate::gateway::Gateway;
use ecogate::ledger::store::LedgerReader;
use ecogate_drivers::sim::camera::{CameraSim, VzPlate};
use ecogate_drivers::sim::modbus::RelaySim;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A minimal W3C WebDriver client.
mod wd {
    use serde_json::{json, Value};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

    /// chromedriver on a free loopback port; killed on drop.
    pub struct Driver {
        child: Child,
        pub base: String,
    }

    impl Driver {
        pub async fn start(binary: &str) -> Driver {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            // Without --allowed-ips chromedriver accepts local connections only.
            let child = Command::new(binary)
                .arg(format!("--port={port}"))
                .arg("--log-level=WARNING")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
            let d = Driver {
                child,
                base: format!("http://127.0.0.1:{port}"),
            };
            let start = Instant::now();
            let http = reqwest::Client::new();
            loop {
                if let Ok(r) = http.get(format!("{}/status", d.base)).send().await {
                    if let Ok(v) = r.text().await.map(|t| serde_json::from_str::<Value>(&t)) {
                        if v.ok().is_some_and(|v| v["value"]["ready"] == true) {
                            break;
                        }
                    }
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "chromedriver did not become ready on {}",
                    d.base
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            d
        }
    }

    impl Drop for Driver {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub struct Session {
        http: reqwest::Client,
        url: String,
        closed: bool,
    }

    /// A failing assertion must not leave a headless browser running: chromedriver quits it
    /// when the session is deleted, and killing chromedriver alone would orphan it.
    impl Drop for Session {
        fn drop(&mut self) {
            if self.closed {
                return;
            }
            use std::io::{Read, Write};
            let Some(rest) = self.url.strip_prefix("http://") else {
                return;
            };
            let Some((host, path)) = rest.split_once('/') else {
                return;
            };
            if let Ok(mut c) = std::net::TcpStream::connect(host) {
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(
                    c,
                    "DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = c.read_to_end(&mut Vec::new());
            }
        }
    }

    #[derive(Clone, Debug)]
    pub struct Element(String);

    impl Session {
        pub async fn new(driver: &Driver, chromium: &str, profile: &std::path::Path) -> Session {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap();
            let caps = json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1366,768",
                             "--no-first-run", "--lang=zh-CN",
                             format!("--user-data-dir={}", profile.display())]
                }
            }}});
            let v = call(
                &http,
                "POST",
                &format!("{}/session", driver.base),
                Some(caps),
            )
            .await
            .unwrap_or_else(|e| panic!("new WebDriver session: {e}"));
            let id = v["sessionId"]
                .as_str()
                .unwrap_or_else(|| panic!("no sessionId in {v}"))
                .to_string();
            Session {
                http,
                url: format!("{}/session/{id}", driver.base),
                closed: false,
            }
        }

        async fn cmd(
            &self,
            method: &str,
            path: &str,
            body: Option<Value>,
        ) -> Result<Value, String> {
            call(&self.http, method, &format!("{}{path}", self.url), body).await
        }

        pub async fn goto(&self, url: &str) {
            self.cmd("POST", "/url", Some(json!({ "url": url })))
                .await
                .unwrap();
        }

        pub async fn find(&self, css: &str) -> Option<Element> {
            let v = self
                .cmd(
                    "POST",
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await
                .ok()?;
            v[ELEMENT].as_str().map(|s| Element(s.to_string()))
        }

        /// Waits for an element matching `css`; on timeout fails with the page's text.
        pub async fn wait(&self, css: &str) -> Element {
            let start = Instant::now();
            loop {
                if let Some(e) = self.find(css).await {
                    return e;
                }
                if start.elapsed() > Duration::from_secs(15) {
                    let body = self
                        .script("return document.body.innerText", json!([]))
                        .await;
                    panic!("timed out waiting for `{css}`; the page shows:\n{body}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        /// Waits for an element matching `css` whose text contains `text`.
        pub async fn wait_text(&self, css: &str, text: &str) -> Element {
            let start = Instant::now();
            loop {
                if let Some(e) = self.find(css).await {
                    // The element may be replaced between find and read (live updates).
                    let got = self
                        .cmd("GET", &format!("/element/{}/text", e.0), None)
                        .await
                        .ok();
                    if got
                        .as_ref()
                        .and_then(Value::as_str)
                        .is_some_and(|t| t.contains(text))
                    {
                        return e;
                    }
                }
                if start.elapsed() > Duration::from_secs(15) {
                    let body = self
                        .script("return document.body.innerText", json!([]))
                        .await;
                    panic!(
                        "timed out waiting for `{css}` to say `{text}`; the page shows:\n{body}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        pub async fn click(&self, e: &Element) {
            self.cmd("POST", &format!("/element/{}/click", e.0), Some(json!({})))
                .await
                .unwrap();
        }

        pub async fn type_into(&self, e: &Element, text: &str) {
            self.cmd("POST", &format!("/element/{}/clear", e.0), Some(json!({})))
                .await
                .unwrap();
            self.cmd(
                "POST",
                &format!("/element/{}/value", e.0),
                Some(json!({ "text": text })),
            )
            .await
            .unwrap();
        }

        pub async fn text(&self, e: &Element) -> String {
            self.cmd("GET", &format!("/element/{}/text", e.0), None)
                .await
                .unwrap()
                .as_str()
                .unwrap_or_default()
                .to_string()
        }

        pub async fn attr(&self, e: &Element, name: &str) -> Option<String> {
            self.cmd("GET", &format!("/element/{}/attribute/{name}", e.0), None)
                .await
                .unwrap()
                .as_str()
                .map(str::to_string)
        }

        pub async fn prop(&self, e: &Element, name: &str) -> Option<String> {
            self.cmd("GET", &format!("/element/{}/property/{name}", e.0), None)
                .await
                .unwrap()
                .as_str()
                .map(str::to_string)
        }

        pub async fn script(&self, script: &str, args: Value) -> Value {
            self.cmd(
                "POST",
                "/execute/sync",
                Some(json!({"script": script, "args": args})),
            )
            .await
            .unwrap_or_else(|e| json!(format!("(script failed: {e})")))
        }

        pub async fn close(mut self) {
            let _ = self.cmd("DELETE", "", None).await;
            self.closed = true;
        }
    }

    async fn call(
        http: &reqwest::Client,
        method: &str,
        url: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let m = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut req = http.request(m, url);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let res = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = res.status();
        let text = res.text().await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{url}: {e}: {text}"))?;
        if !status.is_success() {
            return Err(format!("{url}: {status}: {}", v["value"]));
        }
        Ok(v["value"].clone())
    }
}

fn require_browser() {
    for (bin, pkg) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: the console's browser test needs Debian's `chromium` and \
             `chromium-driver` (apt-get install chromium chromium-driver; .ci/run installs {pkg})"
        );
    }
}

fn site(dir: &Path, io_addr: SocketAddr) -> std::path::PathBuf {
    let text = support::one_lane_site(
        "console-e2e",
        io_addr,
        "[http]\nlisten = \"127.0.0.1:0\"\n[policy]\nrequire_registered = true\n",
    );
    let p = dir.join("site.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The one-lane site with its relay simulator and the console's users, running.
async fn start_site(dir: &Path) -> (RelaySim, Gateway) {
    let sim = support::barrier_relay(Duration::from_secs(3)).await;
    let plan = ecogate::config::load(&site(dir, sim.addr())).unwrap();
    let users = UserStore::open(&plan.data_dir).unwrap();
    for (name, display, role, password) in [
        ("guard", "门岗张三", Role::Guard, "guard123"),
        ("supervisor", "主管李四", Role::Supervisor, "super123"),
        ("inspector", "核查员王五", Role::Inspector, "insp1234"),
        ("envmgr", "环保专员赵六", Role::EnvManager, "env12345"),
    ] {
        users.create(name, display, role, password).unwrap();
    }
    drop(users);
    let gw = Gateway::start(plan, None, None).await.unwrap();
    let io = gw.devices.handles["io1"].health.clone();
    wait_for("io1 online", 5, || io.borrow().online.then_some(())).await;
    (sim, gw)
}

async fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn events(dir: &Path) -> Vec<(String, Value)> {
    let r = LedgerReader::open(&dir.join("ledger")).unwrap();
    r.events_after(0, 10_000)
        .unwrap()
        .into_iter()
        .map(|e| (e.kind.clone(), serde_json::to_value(&e.body).unwrap()))
        .collect()
}

/// Logs in through the form; the header then names the user by display name.
async fn login(s: &wd::Session, base: &str, user: &str, password: &str, display: &str) {
    s.goto(&format!("{base}/#/login")).await;
    let u = s.wait("[data-testid=login-username]").await;
    s.type_into(&u, user).await;
    let p = s.wait("[data-testid=login-password]").await;
    s.type_into(&p, password).await;
    s.click(&s.wait("[data-testid=login-submit]").await).await;
    let who = s.wait("[data-testid=current-user]").await;
    let shown = s.text(&who).await;
    assert!(
        shown.contains(display),
        "logged in as `{shown}`, not {display}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_requests_supervisor_approves_barrier_opens() {
    require_browser();
    let dir = tempfile::tempdir().unwrap();
    let (sim, gw) = start_site(dir.path()).await;

    // An unregistered truck under require_registered: refused, barrier stays down.
    let cam = CameraSim::new(format!("http://{}/ingest/vz/cam1", gw.http_addr));
    let reply = cam.vz_plate(&VzPlate::new("豫A99999", 1)).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    wait_for("the refused pass in the ledger", 5, || {
        events(dir.path())
            .iter()
            .any(|(k, b)| k == "pass_attempt" && b["decision"] == "deny")
            .then_some(())
    })
    .await;
    assert!(
        !sim.coil_log().iter().any(|c| c.on),
        "the barrier moved for a refused vehicle"
    );

    let driver = wd::Driver::start(CHROMEDRIVER).await;
    let profile = tempfile::tempdir().unwrap();
    let s = wd::Session::new(&driver, CHROMIUM, profile.path()).await;
    let base = format!("http://{}", gw.http_addr);

    // The guard sees the refused vehicle on the lane's tile.
    login(&s, &base, "guard", "guard123", "门岗张三").await;
    s.goto(&format!("{base}/#/live")).await;
    let tile = s
        .wait("[data-testid='lane-tile-1-in'][data-decision='deny']")
        .await;
    assert!(
        s.attr(&tile, "class")
            .await
            .unwrap_or_default()
            .contains("tile-denied"),
        "a refused vehicle's tile is not marked"
    );
    let plate = s
        .wait("[data-testid='lane-tile-1-in'] [data-testid=lane-plate]")
        .await;
    assert_eq!(s.text(&plate).await, "豫A99999");
    let decision = s
        .wait("[data-testid='lane-tile-1-in'] [data-testid=lane-decision]")
        .await;
    assert_eq!(s.text(&decision).await, "禁止通行");
    let barrier = s
        .wait("[data-testid='lane-tile-1-in'] [data-testid=lane-barrier]")
        .await;
    assert_eq!(s.attr(&barrier, "data-open").await.as_deref(), Some("0"));

    // … and files a manual release with a reason from the site's list and a note.
    s.click(
        &s.wait("[data-testid='lane-tile-1-in'] [data-testid=btn-release]")
            .await,
    )
    .await;
    s.wait("[data-testid=release-form]").await;
    // The plate comes prefilled from the tile (the guard corrects it when misread).
    let typed = s.wait("[data-testid=release-plate]").await;
    assert_eq!(s.prop(&typed, "value").await.as_deref(), Some("豫A99999"));
    s.click(
        &s.wait("[data-testid=release-reason] option[value=visitor]")
            .await,
    )
    .await;
    let text = s.wait("[data-testid=release-text]").await;
    s.type_into(&text, "送检样品车，已电话核实").await;
    s.click(&s.wait("[data-testid=dialog-submit]").await).await;
    s.wait_text("[data-testid=toast-ok]", "等待主管审批").await;
    s.wait("[data-testid='lane-tile-1-in'] [data-testid=lane-waiting]")
        .await;
    assert!(
        !sim.coil_log().iter().any(|c| c.on),
        "the barrier opened before approval"
    );

    // The supervisor approves it.
    s.click(&s.wait("[data-testid=logout]").await).await;
    s.wait("[data-testid=login-form]").await;
    login(&s, &base, "supervisor", "super123", "主管李四").await;
    s.goto(&format!("{base}/#/pending")).await;
    s.click(
        &s.wait("[data-testid=pending-table] [data-action=approve]")
            .await,
    )
    .await;
    let note = s.wait("[data-testid=decision-note]").await;
    s.type_into(&note, "同意").await;
    s.click(&s.wait("[data-testid=dialog-submit]").await).await;
    s.wait_text("[data-testid=toast-ok]", "已批准").await;

    // The barrier opens: the relay sees the pulse, the lane sees the limit switch.
    wait_for("the barrier pulse after approval", 10, || {
        let flash = sim
            .frames()
            .iter()
            .any(|f| f.len() >= 12 && f[7] == 0x05 && u16::from_be_bytes([f[8], f[9]]) == 0x0200);
        (flash || sim.coil_log().iter().any(|c| c.coil == 0 && c.on)).then_some(())
    })
    .await;
    let status = gw.lanes[0].status.clone();
    wait_for("barrier_open on the lane", 10, || {
        status.borrow().barrier_open.then_some(())
    })
    .await;

    // The live tile now shows the manual release.
    s.goto(&format!("{base}/#/live")).await;
    s.wait("[data-testid='lane-tile-1-in'][data-decision='manual']")
        .await;

    // An inspector reads everything and is offered no write: no release or correction on the
    // tile, no 待审批 in the menu, no edit in the registries.
    s.click(&s.wait("[data-testid=logout]").await).await;
    s.wait("[data-testid=login-form]").await;
    login(&s, &base, "inspector", "insp1234", "核查员王五").await;
    s.goto(&format!("{base}/#/live")).await;
    s.wait("[data-testid='lane-tile-1-in'][data-decision='manual']")
        .await;
    for css in [
        "[data-testid=btn-release]",
        "[data-testid=btn-correct]",
        "[data-testid=nav-pending]",
    ] {
        assert!(s.find(css).await.is_none(), "an inspector is shown `{css}`");
    }
    s.goto(&format!("{base}/#/registries")).await;
    s.wait("[data-testid=registry-table]").await;
    assert!(s.find("[data-testid=reg-add]").await.is_none());
    s.close().await;

    // The ledger: request → approval → actuation, the actuation manual and naming the approver.
    let ev = events(dir.path());
    let pos = |kind: &str| {
        ev.iter()
            .position(|(k, _)| k == kind)
            .unwrap_or_else(|| panic!("no {kind} in the ledger: {ev:#?}"))
    };
    let (req, dec, rel) = (
        pos("release_request"),
        pos("release_decision"),
        pos("manual_release"),
    );
    assert!(req < dec && dec < rel, "order: {ev:#?}");
    assert_eq!(ev[req].1["requested_by"], "guard");
    assert_eq!(ev[req].1["reason_code"], "visitor");
    assert_eq!(ev[req].1["plate"], "豫A99999");
    assert_eq!(ev[dec].1["approved"], true);
    assert_eq!(ev[dec].1["by"], "supervisor");
    assert_eq!(ev[rel].1["mode"], "manual");
    assert_eq!(ev[rel].1["approval"], "supervisor");
    assert_eq!(ev[rel].1["plate"], "豫A99999");
    assert!(ecogate::ledger::verify::verify(&dir.path().join("ledger"))
        .unwrap()
        .ok());
}

/// The environmental manager's day: registers a refused truck, finds both of its passes in
/// the search and opens one, builds the report (its charts count the entry) and draws a 核查
/// sample with a fixed seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_manager_registers_searches_reports_and_inspects() {
    require_browser();
    let dir = tempfile::tempdir().unwrap();
    let (_relay, gw) = start_site(dir.path()).await;
    let cam = CameraSim::new(format!("http://{}/ingest/vz/cam1", gw.http_addr));
    let first_read = Instant::now();
    let reply = cam.vz_plate(&VzPlate::new("豫A11111", 1)).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    wait_for("the refused pass", 5, || {
        events(dir.path())
            .iter()
            .any(|(k, b)| k == "pass_attempt" && b["decision"] == "deny")
            .then_some(())
    })
    .await;

    let driver = wd::Driver::start(CHROMEDRIVER).await;
    let profile = tempfile::tempdir().unwrap();
    let s = wd::Session::new(&driver, CHROMIUM, profile.path()).await;
    let base = format!("http://{}", gw.http_addr);
    login(&s, &base, "envmgr", "env12345", "环保专员赵六").await;

    // Registers the truck through the registry form.
    s.goto(&format!("{base}/#/registries/transport")).await;
    s.wait("[data-testid=registry-table]").await;
    s.click(&s.wait("[data-testid=reg-add]").await).await;
    let form = "[data-testid=registry-form]";
    for (name, value) in [
        ("plate", "豫A11111"),
        ("vin", "LZZ1CLVB7KA111111"),
        ("engine_no", "E1111"),
        ("vehicle_type", "Q11"),
        ("stage", "6"),
        ("fleet", "自有车队"),
    ] {
        let e = s.wait(&format!("{form} [name={name}]")).await;
        s.type_into(&e, value).await;
    }
    s.click(
        &s.wait(&format!("{form} [name=color] option[value=yellow]"))
            .await,
    )
    .await;
    s.click(&s.wait(&format!("{form} [name=fuel] option[value=B]")).await)
        .await;
    // A date input takes keys in the browser's locale order; set the value as a user's pick would.
    s.script(
        "const e = document.querySelector('[data-testid=registry-form] [name=registered_on]'); \
         e.value = '2023-07-01'; e.dispatchEvent(new Event('input', {bubbles: true}));",
        serde_json::json!([]),
    )
    .await;
    s.click(&s.wait("[data-testid=dialog-submit]").await).await;
    s.wait_text("[data-testid=toast-ok]", "已保存").await;
    s.wait_text("[data-testid=registry-table]", "豫A11111")
        .await;
    let change = events(dir.path())
        .into_iter()
        .find(|(k, _)| k == "registry_change")
        .expect("the registration is a ledger event");
    assert_eq!(change.1["source"], "api:envmgr", "{}", change.1);
    assert_eq!(change.1["record"]["stage"], "6", "{}", change.1);

    // Registered as 国六: the same truck is let in now (read again after the camera
    // profile's 5 s repeat debounce, as a truck that backed up and drove in again).
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(first_read.elapsed())).await;
    let reply = cam.vz_plate(&VzPlate::new("豫A11111", 2)).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let status = gw.lanes[0].status.clone();
    wait_for("the barrier to open for the registered truck", 10, || {
        status.borrow().barrier_open.then_some(())
    })
    .await;

    // The search finds both passes by part of the plate; the allowed one opens in detail.
    s.goto(&format!("{base}/#/search")).await;
    let plate = s.wait("[data-testid=search-plate]").await;
    s.type_into(&plate, "A11111").await;
    s.click(&s.wait("[data-testid=search-submit]").await).await;
    s.wait_text("[data-testid=search-table]", "允许").await;
    let rows = s
        .script(
            "return [...document.querySelectorAll('[data-testid=search-table] tbody tr')]\
               .map(r => r.innerText)",
            serde_json::json!([]),
        )
        .await;
    let rows: Vec<String> = rows
        .as_array()
        .unwrap_or_else(|| panic!("rows: {rows}"))
        .iter()
        .map(|r| r.as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r.contains("豫A11111")), "{rows:?}");
    assert_eq!(
        rows.iter().filter(|r| r.contains("拒绝")).count(),
        1,
        "{rows:?}"
    );
    s.click(
        &s.wait("[data-testid=search-table] tbody tr:not(.row-deny)")
            .await,
    )
    .await;
    let detail = s.wait_text("[data-testid=pass-detail]", "豫A11111").await;
    let text = s.text(&detail).await;
    assert!(text.contains("国六"), "the detail shows no stage: {text}");

    // 更正: the cargo was not keyed at the gate; the env manager adds it from the detail. The
    // record stays as it was and a correction naming it joins the related records.
    s.click(&s.wait("[data-testid=amend-pass_attempt]").await)
        .await;
    let cargo = s.wait("[data-testid=amend-cargo]").await;
    s.type_into(&cargo, "焦炭").await;
    let reason = s.wait("[data-testid=amend-reason]").await;
    s.type_into(&reason, "门岗漏记货物").await;
    s.click(&s.wait("[data-testid=dialog-submit]").await).await;
    s.wait_text(
        "[data-testid=pass-detail] [data-testid=event-correction]",
        "焦炭",
    )
    .await;
    let fix = events(dir.path())
        .into_iter()
        .rfind(|(k, _)| k == "correction")
        .expect("a correction event");
    assert_eq!(fix.1["cargo"], "焦炭", "{}", fix.1);
    assert_eq!(fix.1["operator"], "envmgr", "{}", fix.1);
    assert_eq!(fix.1["reason"], "门岗漏记货物", "{}", fix.1);

    // The report for the last days counts one entry, in the hour chart too.
    s.goto(&format!("{base}/#/reports")).await;
    s.click(&s.wait("[data-testid=report-submit]").await).await;
    s.wait("[data-testid=summary-report] [data-testid=column-chart]")
        .await;
    let titles = s
        .script(
            "return [...document.querySelectorAll('[data-testid=summary-report] svg title')]\
               .map(t => t.textContent)",
            serde_json::json!([]),
        )
        .await;
    let titles: Vec<String> = titles
        .as_array()
        .unwrap_or_else(|| panic!("titles: {titles}"))
        .iter()
        .map(|t| t.as_str().unwrap_or_default().to_string())
        .collect();
    let hour = chrono::Utc::now()
        .with_timezone(&ecogate::ledger::site_zone())
        .format("%H")
        .to_string();
    assert!(
        titles.iter().any(|t| t == &format!("{hour} 进厂: 1")),
        "no bar for one entry in hour {hour}: {titles:?}"
    );
    assert!(
        s.find("[data-testid=summary-report] [data-testid=pie-chart]")
            .await
            .is_some(),
        "no stage/fuel mix chart"
    );

    // 核查: a sample with a fixed seed. The population is the ledger rows of the period — the
    // pass that opened the barrier; the refused attempt is not a 台账 row.
    s.goto(&format!("{base}/#/inspection")).await;
    let n = s.wait("[data-testid=inspection-form] [name=sample]").await;
    s.type_into(&n, "5").await;
    let seed = s.wait("[data-testid=inspection-form] [name=seed]").await;
    s.type_into(&seed, "42").await;
    s.click(&s.wait("[data-testid=inspection-submit]").await)
        .await;
    let report = s
        .wait_text("[data-testid=inspection-report]", "随机种子 42")
        .await;
    let text = s.text(&report).await;
    assert!(text.contains("总体 1 条"), "{text}");
    let samples = s
        .script(
            "return [...document.querySelectorAll('[data-testid=sample-row]')].map(e => e.innerText)",
            serde_json::json!([]),
        )
        .await;
    let samples = samples.as_array().cloned().unwrap_or_default();
    assert_eq!(samples.len(), 1, "{text}");
    let card = samples[0].as_str().unwrap_or_default();
    assert!(
        card.contains("豫A11111") && card.contains("国六") && card.contains("允许"),
        "{card}"
    );
    // Day averages are shown as figures, not raw floats (1 entry over the 30 days).
    let avg = s.wait("[data-testid=day-average]").await;
    assert!(
        s.text(&avg).await.contains("日均进厂 0.03，"),
        "{}",
        s.text(&avg).await
    );
    let xlsx = s.wait("[data-testid=inspection-xlsx]").await;
    let href = s.attr(&xlsx, "href").await.unwrap_or_default();
    assert!(
        href.contains("seed=42") && href.contains("format=xlsx"),
        "{href}"
    );
    s.close().await;
}

/// Every file the page references is served with its type and a validator, unknown files are
/// a JSON 404, and the first page (HTML, CSS and every JS module it loads) stays under 300 KB.
#[tokio::test]
async fn first_page_assets_are_served_and_small() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, ecogate::api::console::router::<()>())
            .await
            .unwrap()
    });
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");

    let index = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(index.status(), 200);
    assert!(index.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = index.text().await.unwrap();
    let mut total = html.len();
    let mut todo: Vec<String> = refs(&html, &["href=\"/console/", "src=\"/console/"]);
    assert!(
        todo.iter().any(|f| f == "app.js") && todo.iter().any(|f| f == "style.css"),
        "index.html references {todo:?}"
    );
    let mut seen = Vec::new();
    while let Some(f) = todo.pop() {
        if seen.contains(&f) {
            continue;
        }
        let r = http
            .get(format!("{base}/console/{f}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{f} is referenced but not served");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        let want = if f.ends_with(".js") {
            "text/javascript"
        } else {
            "text/css"
        };
        assert!(ct.starts_with(want), "{f}: content-type {ct}");
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        let body = r.text().await.unwrap();
        total += body.len();
        if f.ends_with(".js") {
            todo.extend(refs(&body, &["from \"./", "import(\"./"]));
        }
        let again = http
            .get(format!("{base}/console/{f}"))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{f}: revalidation with its ETag");
        seen.push(f);
    }
    // Every embedded file is part of the first page, so none is dead weight.
    for a in ecogate::api::console::ASSETS {
        assert!(
            a.name == "index.html" || seen.iter().any(|s| s == a.name),
            "{} is embedded but never loaded",
            a.name
        );
    }
    println!(
        "console first page: {total} bytes in {} files",
        seen.len() + 1
    );
    assert!(total < 300 * 1024, "first page is {total} bytes");

    let missing = http
        .get(format!("{base}/console/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let v: Value = serde_json::from_str(&missing.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    assert!(v["error"]["message"].as_str().unwrap().contains("nope.js"));
}

/// File names after each of `prefixes` up to the closing quote.
fn refs(text: &str, prefixes: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for p in prefixes {
        let mut rest = text;
        while let Some(i) = rest.find(p) {
            rest = &rest[i + p.len()..];
            if let Some(end) = rest.find('"') {
                out.push(rest[..end].to_string());
            }
        }
    }
    out
}
