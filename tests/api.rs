//! The operator API against a real gateway on loopback: a VZ camera simulator pushes plates to
//! the ingest listener, a Modbus relay simulator is the barrier, and reqwest is the console.

mod support;

use ecogate::api::auth::Role;
use ecogate::gateway::Gateway;
use ecogate::ledger::store::{EventRecord, LedgerReader};
use ecogate_drivers::sim::camera::{CameraSim, VzPlate};
use ecogate_drivers::sim::modbus::RelaySim;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct Site {
    dir: tempfile::TempDir,
    gw: Gateway,
    sim: RelaySim,
    base: String,
    http: reqwest::Client,
}

const USERS: [(&str, &str, Role); 6] = [
    ("guard", "guard123", Role::Guard),
    ("guard2", "guard456", Role::Guard),
    ("supervisor", "super123", Role::Supervisor),
    ("envmgr", "env12345", Role::EnvManager),
    ("admin", "admin123", Role::Admin),
    ("inspector", "insp123", Role::Inspector),
];

async fn start(extra: &str) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let sim = support::barrier_relay(Duration::from_millis(800)).await;
    let text = support::one_lane_site(
        "api",
        sim.addr(),
        &format!("[policy]\nrequire_registered = true\n{extra}\n"),
    );
    let p = dir.path().join("site.toml");
    std::fs::write(&p, text).unwrap();
    let plan = ecogate::config::load(&p).unwrap_or_else(|d| panic!("{d}"));
    let gw = Gateway::start(plan, Some("127.0.0.1:0".parse().unwrap()), None)
        .await
        .unwrap();
    for (u, pw, role) in USERS {
        gw.api.inner.users.create(u, "", role, pw).unwrap();
    }
    let io = gw.devices.handles["io1"].health.clone();
    wait("io1 online", || io.borrow().online.then_some(())).await;
    let base = format!("http://{}", gw.http_addr);
    Site {
        dir,
        gw,
        sim,
        base,
        http: reqwest::Client::new(),
    }
}

async fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

impl Site {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    async fn login(&self, user: &str) -> String {
        let pw = USERS.iter().find(|u| u.0 == user).unwrap().1;
        let (st, v) = self
            .call(
                Method::POST,
                "/api/v1/login",
                None,
                Some(json!({"username": user, "password": pw})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    fn events(&self) -> Vec<EventRecord> {
        LedgerReader::open(&self.dir.path().join("ledger"))
            .unwrap()
            .events_after(0, 10_000)
            .unwrap()
    }

    fn kinds(&self, kind: &str) -> Vec<EventRecord> {
        self.events()
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect()
    }

    fn camera(&self) -> CameraSim {
        CameraSim::new(format!("{}/ingest/vz/cam1", self.base))
    }

    async fn push_plate(&self, plate: &str, id: u64) {
        let mut p = VzPlate::new(plate, id);
        p.image_bytes = 2000;
        let r = self.camera().vz_plate(&p).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }

    fn barrier_moved(&self) -> bool {
        let flash =
            self.sim.frames().iter().any(|f| {
                f.len() >= 12 && f[7] == 0x05 && u16::from_be_bytes([f[8], f[9]]) == 0x0200
            });
        flash || self.sim.coil_log().iter().any(|c| c.coil == 0 && c.on)
    }
}

fn body(e: &EventRecord) -> Value {
    serde_json::to_value(&e.body).unwrap()
}

fn concrete(path: &str) -> String {
    path.replace("{username}", "guard")
        .replace("{seq}", "1")
        .replace("{sha256}", &"0".repeat(64))
        .replace("{kind}", "transport")
        .replace("{key}", "x")
        .replace("{id}", "x")
        .replace("{lane}", "1-in")
}

fn method(m: &str) -> Method {
    Method::from_bytes(m.to_uppercase().as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_rejects_missing_and_bad_auth() {
    let s = start("").await;
    let routes = ecogate::api::route_table();
    assert!(routes.len() > 25);
    for (m, p) in routes {
        if p == "/api/v1/login" || p == "/api/v1/openapi.json" {
            continue;
        }
        let path = concrete(p);
        for token in [None, Some("not-a-session")] {
            let (st, v) = s.call(method(m), &path, token, Some(json!({}))).await;
            assert_eq!(st, 401, "{m} {path} with {token:?}: {v}");
            assert_eq!(v["error"]["code"], "unauthenticated", "{m} {path}: {v}");
        }
    }
    // The cookie works like the bearer token.
    let t = s.login("guard").await;
    let r = s
        .http
        .get(format!("{}/api/v1/me", s.base))
        .header("cookie", format!("ecogate_session={t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let me: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(me["role"], "guard");
    // Logout ends the session.
    let (st, _) = s.call(Method::POST, "/api/v1/logout", Some(&t), None).await;
    assert_eq!(st, 204);
    let (st, _) = s.call(Method::GET, "/api/v1/me", Some(&t), None).await;
    assert_eq!(st, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inspector_gets_403_on_every_write() {
    let s = start("").await;
    let t = s.login("inspector").await;
    let before = s.gw.ledger.head().seq;
    let mut writes = 0;
    for (m, p) in ecogate::api::route_table() {
        if m == "get" || p == "/api/v1/login" || p == "/api/v1/logout" {
            continue;
        }
        let b = match p {
            "/api/v1/users" => json!({"username": "x1", "role": "guard", "password": "secret1"}),
            "/api/v1/users/{username}/password" => json!({"password": "secret12"}),
            "/api/v1/alarms/ack" => json!({"source": "s", "code": "c"}),
            "/api/v1/releases" => json!({"lane": "1-in", "reason_code": "visitor"}),
            "/api/v1/lanes/{lane}/correct-plate" => json!({"plate": "豫A1", "color": "yellow"}),
            "/api/v1/corrections" => json!({"refs": "x", "reason": "r", "void": true}),
            "/api/v1/transport-tonnage" => {
                json!({"date": "2026-11-01", "mode": "rail", "cargo": "铁矿石", "tonnes": 100.0})
            }
            _ => json!({}),
        };
        let (st, v) = s.call(method(m), &concrete(p), Some(&t), Some(b)).await;
        assert_eq!(st, 403, "{m} {p}: {v}");
        assert_eq!(v["error"]["code"], "forbidden", "{m} {p}: {v}");
        writes += 1;
    }
    assert!(writes >= 10, "only {writes} write routes");
    assert_eq!(
        s.gw.ledger.head().seq,
        before,
        "a refused write reached the ledger"
    );
    // Reads are fine.
    let (st, _) = s.call(Method::GET, "/api/v1/lanes", Some(&t), None).await;
    assert_eq!(st, 200);
}

/// Method, path, token, body, expected status, what the message must name.
type Case<'a> = (Method, &'a str, &'a str, Option<Value>, u16, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx_naming_the_field() {
    let s = start("").await;
    let guard = s.login("guard").await;
    let admin = s.login("admin").await;
    let env = s.login("envmgr").await;
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/api/v1/login",
            "",
            Some(json!({"username": "guard"})),
            400,
            "password",
        ),
        (
            Method::POST,
            "/api/v1/releases",
            &guard,
            Some(json!({"lane": "9-in", "reason_code": "visitor"})),
            422,
            "lane",
        ),
        (
            Method::POST,
            "/api/v1/releases",
            &guard,
            Some(json!({"lane": "1-in", "reason_code": "because"})),
            422,
            "reason_code",
        ),
        (
            Method::POST,
            "/api/v1/releases",
            &guard,
            Some(json!({"lane": "1-in"})),
            400,
            "reason_code",
        ),
        (
            Method::POST,
            "/api/v1/releases",
            &guard,
            Some(json!({"lane": "1-in", "reason_code": "visitor", "color": "purple"})),
            400,
            "color",
        ),
        (
            Method::GET,
            "/api/v1/passes?direction=up",
            &guard,
            None,
            400,
            "direction",
        ),
        (
            Method::GET,
            "/api/v1/passes?per_page=1000",
            &guard,
            None,
            400,
            "per_page",
        ),
        (
            Method::GET,
            "/api/v1/passes?page=x",
            &guard,
            None,
            400,
            "page",
        ),
        (
            Method::GET,
            "/api/v1/passes?from=yesterday",
            &guard,
            None,
            400,
            "from",
        ),
        (Method::GET, "/api/v1/passes/abc", &guard, None, 400, "seq"),
        (
            Method::GET,
            "/api/v1/passes/999999",
            &guard,
            None,
            404,
            "999999",
        ),
        (
            Method::GET,
            "/api/v1/photos/xyz",
            &guard,
            None,
            400,
            "sha256",
        ),
        (
            Method::GET,
            "/api/v1/releases?status=maybe",
            &guard,
            None,
            400,
            "status",
        ),
        (
            Method::POST,
            "/api/v1/users",
            &admin,
            Some(json!({"username": "x", "role": "boss", "password": "secret1"})),
            422,
            "role",
        ),
        (
            Method::POST,
            "/api/v1/users",
            &admin,
            Some(json!({"username": "guard", "role": "guard", "password": "secret1"})),
            409,
            "guard",
        ),
        (
            Method::POST,
            "/api/v1/users",
            &admin,
            Some(json!({"username": "x y", "role": "guard", "password": "secret1"})),
            422,
            "username",
        ),
        (
            Method::POST,
            "/api/v1/users/guard/password",
            &admin,
            Some(json!({"password": "123"})),
            422,
            "password",
        ),
        (
            Method::POST,
            "/api/v1/registries/transport",
            &env,
            Some(json!({"plate": "豫A54321", "color": "yellow"})),
            422,
            "vin",
        ),
        (
            Method::GET,
            "/api/v1/registries/boats",
            &env,
            None,
            404,
            "boats",
        ),
        (
            Method::POST,
            "/api/v1/lanes/1-in/correct-plate",
            &guard,
            Some(json!({"plate": "豫A54321", "color": "pink"})),
            400,
            "color",
        ),
        (
            Method::POST,
            "/api/v1/lanes/9-in/correct-plate",
            &guard,
            Some(json!({"plate": "豫A54321", "color": "yellow"})),
            422,
            "lane",
        ),
        (
            Method::POST,
            "/api/v1/alarms/ack",
            &env,
            Some(json!({"source": "device:x", "code": "nothing"})),
            422,
            "code",
        ),
        (
            Method::POST,
            "/api/v1/releases/nope/approve",
            &admin,
            None,
            404,
            "nope",
        ),
        (
            Method::GET,
            "/api/v1/no-such-thing",
            &guard,
            None,
            404,
            "no-such-thing",
        ),
    ];
    for (m, path, tok, b, want, field) in cases {
        let tok = (!tok.is_empty()).then_some(tok);
        let (st, v) = s.call(m.clone(), path, tok, b).await;
        assert_eq!(st, want, "{m} {path}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(v["error"]["code"].is_string(), "{m} {path}: {v}");
        assert!(
            msg.contains(field),
            "{m} {path}: message `{msg}` does not name `{field}`"
        );
    }
    // Malformed JSON.
    let r = s
        .http
        .post(format!("{}/api/v1/releases", s.base))
        .bearer_auth(&guard)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failed_logins_lock_the_account_out() {
    let s = start("").await;
    for i in 0..5 {
        let (st, v) = s
            .call(
                Method::POST,
                "/api/v1/login",
                None,
                Some(json!({"username": "guard", "password": format!("wrong{i}")})),
            )
            .await;
        assert_eq!(st, 401, "attempt {i}: {v}");
    }
    // Now even the right password is refused, with a 429 and a Retry-After.
    let r = s
        .http
        .post(format!("{}/api/v1/login", s.base))
        .header("content-type", "application/json")
        .body(json!({"username": "guard", "password": "guard123"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "throttled");
    // The same address is locked out for other usernames too (per-IP throttling).
    let (st, _) = s
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"username": "supervisor", "password": "super123"})),
        )
        .await;
    assert_eq!(st, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_when_idle_and_slide_when_used() {
    let s = start("[console]\nsession_ttl = \"2s\"\n").await;
    let t = s.login("guard").await;
    // Used every second for 3 s: longer than the ttl, still valid (sliding).
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (st, v) = s.call(Method::GET, "/api/v1/me", Some(&t), None).await;
        assert_eq!(st, 200, "{v}");
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (st, v) = s.call(Method::GET, "/api/v1/me", Some(&t), None).await;
    assert_eq!(st, 401, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("expired"));
}

async fn denied_vehicle(s: &Site, plate: &str, id: u64) -> EventRecord {
    let before = s.kinds("pass_attempt").len();
    s.push_plate(plate, id).await;
    let e = wait("the refused pass", || {
        s.kinds("pass_attempt").into_iter().nth(before)
    })
    .await;
    assert_eq!(body(&e)["decision"], "deny", "{:?}", body(&e));
    e
}

async fn release_status(s: &Site, tok: &str, id: &str) -> Value {
    let (st, v) = s
        .call(Method::GET, "/api/v1/releases", Some(tok), None)
        .await;
    assert_eq!(st, 200);
    v.as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_requests_supervisor_approves_the_barrier_opens_after_the_records() {
    let s = start("").await;
    let guard = s.login("guard").await;
    let sup = s.login("supervisor").await;
    let pass = denied_vehicle(&s, "豫A99999", 7).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !s.barrier_moved(),
        "the barrier moved for a refused vehicle"
    );

    let (st, rel) = s
        .call(
            Method::POST,
            "/api/v1/releases",
            Some(&guard),
            Some(
                json!({"lane": "1-in", "plate": "豫A99999", "color": "yellow",
                        "reason_code": "visitor", "reason_text": "送货 联系人王工"}),
            ),
        )
        .await;
    assert_eq!(st, 201, "{rel}");
    assert_eq!(rel["status"], "pending");
    assert_eq!(rel["requested_by"], "guard");
    let id = rel["id"].as_str().unwrap().to_string();
    // The request carries the snapshot of the lane's last pass.
    let req = s.kinds("release_request").pop().unwrap();
    assert_eq!(req.id, id);
    assert_eq!(body(&req)["pass_ref"], pass.id.as_str());
    assert!(!req.photos.is_empty());
    assert_eq!(req.photos, pass.photos);

    // The guard cannot approve (their own request, and not their role); nothing opened.
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/api/v1/releases/{id}/approve"),
            Some(&guard),
            None,
        )
        .await;
    assert_eq!(st, 403, "{v}");
    assert!(!s.barrier_moved());
    let (st, pending) = s
        .call(
            Method::GET,
            "/api/v1/releases?status=pending",
            Some(&sup),
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(pending.as_array().unwrap().len(), 1);

    let (st, v) = s
        .call(
            Method::POST,
            &format!("/api/v1/releases/{id}/approve"),
            Some(&sup),
            Some(json!({"note": "已电话确认"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["approved_by"], "supervisor");
    wait("the barrier pulse", || s.barrier_moved().then_some(())).await;
    let mut done = Value::Null;
    for _ in 0..100 {
        done = release_status(&s, &sup, &id).await;
        if done["status"] == "executed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done["status"], "executed", "{done}");

    // Ledger order: request → decision → manual release.
    let evs = s.events();
    let pos = |k: &str| evs.iter().find(|e| e.kind == k).map(|e| e.seq).unwrap();
    let (rq, dc, mr) = (
        pos("release_request"),
        pos("release_decision"),
        pos("manual_release"),
    );
    assert!(rq < dc && dc < mr, "order {rq} {dc} {mr}");
    let m = body(evs.iter().find(|e| e.kind == "manual_release").unwrap());
    assert_eq!(m["mode"], "manual");
    assert_eq!(m["approval"], "supervisor");
    assert_eq!(m["operator"], "guard");
    assert_eq!(m["request"], id.as_str());
    assert_eq!(m["plate"], "豫A99999");
    let d = body(evs.iter().find(|e| e.kind == "release_decision").unwrap());
    assert_eq!(d["approved"], true);
    assert_eq!(d["by"], "supervisor");
    assert_eq!(done["release_seq"], mr);

    // A decided request cannot be decided again.
    let (st, _) = s
        .call(
            Method::POST,
            &format!("/api/v1/releases/{id}/reject"),
            Some(&sup),
            None,
        )
        .await;
    assert_eq!(st, 409);

    // The detail of the refused pass shows the workflow.
    let (st, det) = s
        .call(
            Method::GET,
            &format!("/api/v1/passes/{}", pass.seq),
            Some(&guard),
            None,
        )
        .await;
    assert_eq!(st, 200);
    let related: Vec<&str> = det["related"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        related,
        ["release_request", "release_decision", "manual_release"]
    );
    // Its photos are served.
    let url = det["photos"][0]["url"].as_str().unwrap();
    let r = s
        .http
        .get(format!("{}{url}", s.base))
        .bearer_auth(&guard)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");

    // The per-guard statistics count it.
    let (st, rep) = s
        .call(Method::GET, "/api/v1/reports/releases", Some(&sup), None)
        .await;
    assert_eq!(st, 200, "{rep}");
    assert_eq!(rep["guards"]["guard"]["requested"], 1);
    assert_eq!(rep["guards"]["guard"]["approved"], 1);
    assert_eq!(rep["guards"]["guard"]["executed"], 1);
    assert_eq!(rep["days"][0]["requests"][0]["status"], "executed");
    assert!(
        ecogate::ledger::verify::verify(&s.dir.path().join("ledger"))
            .unwrap()
            .ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_solo_reason_releases_without_approval_and_rejections_and_expiry_do_not() {
    let s = start("").await;
    let guard = s.login("guard").await;
    let sup = s.login("supervisor").await;
    denied_vehicle(&s, "豫A88888", 8).await;

    // Rejected: no release.
    let (_, rel) = s
        .call(
            Method::POST,
            "/api/v1/releases",
            Some(&guard),
            Some(json!({"lane": "1-in", "plate": "豫A88888", "reason_code": "visitor"})),
        )
        .await;
    let id = rel["id"].as_str().unwrap();
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/api/v1/releases/{id}/reject"),
            Some(&sup),
            Some(json!({"note": "无预约"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "rejected");
    // Expired: a request left pending for 10 min cannot be approved.
    let (_, rel2) = s
        .call(
            Method::POST,
            "/api/v1/releases",
            Some(&guard),
            Some(json!({"lane": "1-in", "plate": "豫A88888", "reason_code": "system_fault"})),
        )
        .await;
    let id2 = rel2["id"].as_str().unwrap();
    assert!(s
        .gw
        .api
        .inner
        .releases
        .backdate(id2, chrono::Duration::minutes(11)));
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/api/v1/releases/{id2}/approve"),
            Some(&sup),
            None,
        )
        .await;
    assert_eq!(st, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("expired"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!s.barrier_moved());
    assert!(s.kinds("manual_release").is_empty());

    // Emergency vehicles: the guard alone.
    let (st, rel3) = s
        .call(Method::POST, "/api/v1/releases", Some(&guard),
            Some(json!({"lane": "1-in", "plate": "豫A88888", "color": "yellow", "reason_code": "emergency", "reason_text": "消防车"})))
        .await;
    assert_eq!(st, 201, "{rel3}");
    assert_eq!(rel3["status"], "approved");
    assert_eq!(rel3["approved_by"], "rule:solo");
    wait("the barrier pulse", || s.barrier_moved().then_some(())).await;
    let m = wait("the manual release", || s.kinds("manual_release").pop()).await;
    assert_eq!(body(&m)["approval"], "rule:solo");
    assert_eq!(body(&m)["request"], rel3["id"]);
    let decisions = s.kinds("release_decision");
    assert_eq!(decisions.len(), 2, "rejection + solo rule");
    assert!(decisions[1].seq < m.seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_requests_survive_a_gateway_restart() {
    let mut s = start("").await;
    let guard = s.login("guard").await;
    let sup = s.login("supervisor").await;
    denied_vehicle(&s, "豫A55555", 5).await;
    let new = |reason: &str| json!({"lane": "1-in", "plate": "豫A55555", "reason_code": reason});
    let (_, rejected) = s
        .call(
            Method::POST,
            "/api/v1/releases",
            Some(&guard),
            Some(new("visitor")),
        )
        .await;
    let rejected = rejected["id"].as_str().unwrap().to_string();
    let (st, _) = s
        .call(
            Method::POST,
            &format!("/api/v1/releases/{rejected}/reject"),
            Some(&sup),
            Some(json!({"note": "无预约"})),
        )
        .await;
    assert_eq!(st, 200);
    let (_, pending) = s
        .call(
            Method::POST,
            "/api/v1/releases",
            Some(&guard),
            Some(new("system_fault")),
        )
        .await;
    let pending = pending["id"].as_str().unwrap().to_string();

    // Restart on the same data dir: the users and the ledger stay, the memory goes.
    s.gw.stop().await;
    let plan = ecogate::config::load(&s.dir.path().join("site.toml")).unwrap();
    s.gw = Gateway::start(plan, Some("127.0.0.1:0".parse().unwrap()), None)
        .await
        .unwrap();
    s.base = format!("http://{}", s.gw.http_addr);
    let io = s.gw.devices.handles["io1"].health.clone();
    wait("io1 online", || io.borrow().online.then_some(())).await;
    let guard = s.login("guard").await;
    let sup = s.login("supervisor").await;

    let r = release_status(&s, &guard, &rejected).await;
    assert_eq!(r["status"], "rejected", "{r}");
    assert_eq!(r["approved_by"], "supervisor");
    assert_eq!(r["note"], "无预约");
    let r = release_status(&s, &guard, &pending).await;
    assert_eq!(r["status"], "pending", "{r}");
    assert_eq!(r["requested_by"], "guard");
    // Deciding a rejected request again is refused; the pending one goes through.
    let (st, _) = s
        .call(
            Method::POST,
            &format!("/api/v1/releases/{rejected}/approve"),
            Some(&sup),
            None,
        )
        .await;
    assert_eq!(st, 409);
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/api/v1/releases/{pending}/approve"),
            Some(&sup),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let m = wait("the manual release", || s.kinds("manual_release").pop()).await;
    assert_eq!(body(&m)["request"].as_str(), Some(pending.as_str()));
    wait("executed", || {
        let st = s.gw.api.inner.releases.status_of(&pending);
        (st == Some(ecogate::api::release::Status::Executed)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrected_plate_is_decided_again() {
    let s = start("").await;
    let env = s.login("envmgr").await;
    let guard = s.login("guard").await;
    // Registered through the API: a registry_change naming the user.
    let (st, ev) = s
        .call(
            Method::POST,
            "/api/v1/registries/transport",
            Some(&env),
            Some(json!({
            "plate": "豫A54321", "color": "yellow", "vin": "LZZ1CLVB7KA999999",
            "engine_no": "-", "vehicle_type": "Q11", "fuel": "B", "stage": "国Ⅵ",
            "registered_on": "2023-07-01", "fleet": "自有车队"})),
        )
        .await;
    assert_eq!(st, 200, "{ev}");
    assert_eq!(ev["body"]["source"], "api:envmgr");
    let (_, list) = s
        .call(
            Method::GET,
            "/api/v1/registries/transport?q=54321",
            Some(&env),
            None,
        )
        .await;
    assert_eq!(list["total"], 1);

    // The camera misreads 豫A54321 as 豫A54821: unknown, refused.
    let misread = denied_vehicle(&s, "豫A54821", 11).await;
    assert_eq!(body(&misread)["reason"], "not_registered");
    let (st, v) = s
        .call(
            Method::POST,
            "/api/v1/lanes/1-in/correct-plate",
            Some(&guard),
            Some(json!({"plate": "豫A54321", "color": "yellow", "note": "识别错误"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["refs"], misread.id.as_str());
    assert_eq!(v["old_plate"], "豫A54821");
    let fixed = wait("the pass decided again", || {
        s.kinds("pass_attempt")
            .into_iter()
            .find(|e| body(e)["plate"] == "豫A54321")
    })
    .await;
    let b = body(&fixed);
    assert_eq!(b["decision"], "allow", "{b}");
    assert!(b["read_id"].as_str().unwrap().starts_with("correction:"));
    assert_eq!(
        fixed.photos, misread.photos,
        "the corrected pass keeps the photos"
    );
    let c = s.kinds("correction").pop().unwrap();
    assert!(c.seq < fixed.seq);
    assert_eq!(body(&c)["refs"], misread.id.as_str());
    assert_eq!(body(&c)["operator"], "guard");
    wait("the barrier pulse", || s.barrier_moved().then_some(())).await;

    // Deleting the record is a ledger event too.
    let key = urlencode("豫A54321 yellow");
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("/api/v1/registries/transport/{key}"),
            Some(&env),
            None,
        )
        .await;
    assert_eq!(st, 204);
    let del = s.kinds("registry_change").pop().unwrap();
    assert_eq!(body(&del)["op"], "delete");
    assert_eq!(body(&del)["source"], "api:envmgr");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrections_change_the_search_and_are_for_supervisors_only() {
    let s = start("").await;
    let guard = s.login("guard").await;
    let sup = s.login("supervisor").await;
    let pass = denied_vehicle(&s, "豫A13579", 21).await;
    let post = |tok: String, b: Value| {
        let s = &s;
        async move {
            s.call(Method::POST, "/api/v1/corrections", Some(&tok), Some(b))
                .await
        }
    };
    // The guard corrects plates at the lane only.
    let (st, v) = post(
        guard.clone(),
        json!({"refs": pass.id, "plate": "豫A24680", "reason": "识别错误"}),
    )
    .await;
    assert_eq!(st, 403, "{v}");
    let (st, v) = post(
        sup.clone(),
        json!({"refs": pass.id, "plate": "豫A24680", "color": "yellow", "direction": "in",
               "reason": "识别错误"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let c = s.kinds("correction").pop().unwrap();
    assert_eq!(c.id, v["id"].as_str().unwrap());
    assert_eq!(body(&c)["refs"], pass.id.as_str());
    assert_eq!(body(&c)["operator"], "supervisor");
    assert_eq!(body(&c)["plate"], "豫A24680");
    // The search finds the record under its corrected plate, flagged corrected.
    let (_, found) = s
        .call(
            Method::GET,
            &format!("/api/v1/passes?plate={}", urlencode("豫A24680")),
            Some(&sup),
            None,
        )
        .await;
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["items"][0]["id"], pass.id.as_str());
    assert_eq!(found["items"][0]["corrected"], true, "{found}");

    // Refusals name what is wrong and write nothing.
    let before = s.gw.ledger.head().seq;
    let alarm_or_other = s
        .events()
        .into_iter()
        .find(|e| {
            !["pass_attempt", "manual_release", "backfill", "weighing"].contains(&e.kind.as_str())
        })
        .unwrap();
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"refs": "no-such-id", "void": true, "reason": "r"}),
            404,
            "no-such-id",
        ),
        (
            json!({"refs": pass.id, "reason": "r"}),
            422,
            "nothing to correct",
        ),
        (
            json!({"refs": pass.id, "void": true, "plate": "豫A11111", "reason": "r"}),
            422,
            "void",
        ),
        (
            json!({"refs": pass.id, "net_kg": "900000", "reason": "r"}),
            422,
            "net",
        ),
        (
            json!({"refs": pass.id, "plate": "A1", "reason": "r"}),
            422,
            "plate",
        ),
        (
            json!({"refs": pass.id, "void": true, "reason": " "}),
            422,
            "reason",
        ),
        (
            json!({"refs": pass.id, "net_kg": "12.3456", "reason": "r"}),
            400,
            "net_kg",
        ),
        (
            json!({"refs": pass.id, "color": "pink", "reason": "r"}),
            400,
            "color",
        ),
        (
            json!({"refs": pass.id, "void": true, "reason": "r", "extra": 1}),
            400,
            "extra",
        ),
        (
            json!({"refs": alarm_or_other.id, "void": true, "reason": "r"}),
            422,
            alarm_or_other.kind.as_str(),
        ),
    ];
    for (b, want, names) in cases {
        let (st, v) = post(sup.clone(), b.clone()).await;
        assert_eq!(st, want, "{b}: {v}");
        let m = v["error"]["message"].as_str().unwrap_or_default();
        assert!(m.contains(names), "{b}: `{m}` should name `{names}`");
    }
    assert_eq!(
        s.gw.ledger.head().seq,
        before,
        "a refused correction was recorded"
    );

    // Voiding once works; voiding again is a conflict.
    let void = json!({"refs": pass.id, "void": true, "reason": "测试车辆"});
    let (st, v) = post(sup.clone(), void.clone()).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = post(sup.clone(), void).await;
    assert_eq!(st, 409, "{v}");
    let (_, found) = s
        .call(
            Method::GET,
            &format!("/api/v1/passes?plate={}", urlencode("豫A24680")),
            Some(&sup),
            None,
        )
        .await;
    assert_eq!(found["items"][0]["voided"], true, "{found}");
}

/// Every file below `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_writes_refuse_photo_fields_under_every_name() {
    let s = start("").await;
    let env = s.login("envmgr").await;
    let secret = s.dir.path().join("secret.txt");
    std::fs::write(&secret, b"a server file that must never be served").unwrap();
    let secret_s = secret.to_str().unwrap().to_string();
    let transport = json!({
        "plate": "豫A54321", "color": "yellow", "vin": "LZZ1CLVB7KA999999", "engine_no": "-",
        "vehicle_type": "Q11", "fuel": "B", "stage": "国Ⅵ", "registered_on": "2023-07-01",
        "fleet": "自有车队"});
    let in_plant = json!({"code": "CN-1", "vin": "LZZ1CLVB7KA000001", "fuel": "C", "stage": "D"});
    let machinery = json!({"reg_code": "HB-1", "model": "ZL50", "fuel": "B", "stage": "4"});
    let cases = [
        (
            "transport",
            &transport,
            &["license_photo", "行驶证", "list_photo", "随车清单"][..],
        ),
        (
            "in_plant",
            &in_plant,
            &["license_photo", "行驶证", "list_photo", "随车清单"][..],
        ),
        (
            "machinery",
            &machinery,
            &[
                "engine_plate_photo",
                "发动机铭牌",
                "machine_plate_photo",
                "机械铭牌",
                "label_photo",
                "环保信息标签",
            ][..],
        ),
    ];
    let before = s.kinds("registry_change").len();
    for (kind, base, names) in cases {
        for name in names {
            for value in [json!(secret_s), json!("../../secret.txt"), json!(null)] {
                let mut rec = base.clone();
                rec[*name] = value.clone();
                let (st, v) = s
                    .call(
                        Method::POST,
                        &format!("/api/v1/registries/{kind}"),
                        Some(&env),
                        Some(rec),
                    )
                    .await;
                assert_eq!(st, 400, "{kind} `{name}` = {value}: {v}");
                assert_eq!(v["error"]["code"], "bad_request", "{v}");
                let msg = v["error"]["message"].as_str().unwrap();
                assert!(msg.contains(&format!("`{name}`")), "{msg}");
            }
        }
    }
    assert_eq!(s.kinds("registry_change").len(), before, "nothing recorded");
    let photos = s.dir.path().join("ledger").join("photos");
    for f in files_under(&photos) {
        assert_ne!(
            std::fs::read(&f).unwrap(),
            std::fs::read(&secret).unwrap(),
            "{} holds the server file",
            f.display()
        );
    }
    for kind in ["transport", "in_plant", "machinery"] {
        let (_, list) = s
            .call(
                Method::GET,
                &format!("/api/v1/registries/{kind}"),
                Some(&env),
                None,
            )
            .await;
        assert_eq!(list["total"], 0, "{kind}: {list}");
    }

    // Without photos the records are written; a vehicle without 行驶证 / 随车清单 is flagged.
    let (st, v) = s
        .call(
            Method::POST,
            "/api/v1/registries/transport",
            Some(&env),
            Some(transport.clone()),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let w = v["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 1, "{v}");
    assert!(w[0].as_str().unwrap().contains("行驶证"), "{v}");
    let (st, v) = s
        .call(
            Method::POST,
            "/api/v1/registries/machinery",
            Some(&env),
            Some(machinery.clone()),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["warnings"], json!([]));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_alarms_lanes_and_the_live_stream() {
    let s = start("").await;
    let admin = s.login("admin").await;
    let sup = s.login("supervisor").await;
    let insp = s.login("inspector").await;

    let (st, u) = s
        .call(Method::POST, "/api/v1/users", Some(&admin),
            Some(json!({"username": "guard3", "display_name": "门卫赵六", "role": "guard", "password": "secret99"})))
        .await;
    assert_eq!(st, 201, "{u}");
    let ch = s.kinds("user_change").pop().unwrap();
    let b = body(&ch);
    assert_eq!(
        (
            b["username"].as_str(),
            b["actor"].as_str(),
            b["op"].as_str()
        ),
        (Some("guard3"), Some("admin"), Some("create"))
    );
    assert!(!serde_json::to_string(&b).unwrap().contains("secret99"));
    let (_, list) = s
        .call(Method::GET, "/api/v1/users", Some(&admin), None)
        .await;
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["username"] == "guard3"));
    let (st, _) = s.call(Method::GET, "/api/v1/users", Some(&sup), None).await;
    assert_eq!(st, 403);
    // Self password change, then the new password works.
    let (st, _) = s
        .call(
            Method::POST,
            "/api/v1/users/supervisor/password",
            Some(&sup),
            Some(json!({"password": "newpass1"})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        s.kinds("user_change")
            .pop()
            .map(|e| body(&e)["actor"].clone()),
        Some(json!("supervisor"))
    );
    let (st, _) = s
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"username": "supervisor", "password": "newpass1"})),
        )
        .await;
    assert_eq!(st, 200);

    // Site and lanes.
    let (_, site) = s.call(Method::GET, "/api/v1/site", Some(&insp), None).await;
    assert_eq!(site["site_id"], "api");
    assert_eq!(site["gates"][0]["lanes"][0]["id"], "1-in");
    let solo: Vec<&str> = site["release_reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["solo"] == true)
        .map(|r| r["label"].as_str().unwrap())
        .collect();
    assert_eq!(solo, ["应急车辆"]);
    let (_, devs) = s
        .call(Method::GET, "/api/v1/devices", Some(&insp), None)
        .await;
    assert!(devs
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["name"] == "io1" && d["online"] == true && d["kind"] == "io"));

    // The live stream: every lane first, then changes.
    let mut resp = s
        .http
        .get(format!("{}/api/v1/lanes/stream", s.base))
        .bearer_auth(&insp)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let first = String::from_utf8(resp.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(
        first.contains("event: lane") && first.contains("\"1-in\""),
        "{first}"
    );
    s.push_plate("豫A77777", 21).await;
    let mut seen = String::new();
    let until = Instant::now() + Duration::from_secs(5);
    while !seen.contains("豫A77777") && Instant::now() < until {
        if let Ok(Ok(Some(c))) = tokio::time::timeout(Duration::from_secs(1), resp.chunk()).await {
            seen.push_str(&String::from_utf8_lossy(&c));
        }
    }
    assert!(seen.contains("豫A77777"), "{seen}");
    let (_, lanes) = s
        .call(Method::GET, "/api/v1/lanes", Some(&insp), None)
        .await;
    assert_eq!(lanes[0]["last_pass"]["plate"], "豫A77777");
    assert_eq!(lanes[0]["last_pass"]["decision"], "deny");

    // Alarms: raised on the site's alarm board (as the device health watch does), acknowledged.
    s.gw.alarms
        .record(ecogate::health::Alarm::device(
            "cam1",
            "device_offline",
            "no heartbeat",
            true,
        ))
        .await;
    let (_, al) = s
        .call(Method::GET, "/api/v1/alarms", Some(&insp), None)
        .await;
    let a = al
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["code"] == "device_offline")
        .cloned()
        .unwrap();
    assert!(a["acknowledged_by"].is_null());
    let (st, _) = s
        .call(
            Method::POST,
            "/api/v1/alarms/ack",
            Some(&sup),
            Some(json!({"source": "device:cam1", "code": "device_offline", "note": "已派人"})),
        )
        .await;
    assert_eq!(st, 200);
    let (_, al) = s
        .call(Method::GET, "/api/v1/alarms", Some(&insp), None)
        .await;
    let a = al
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["code"] == "device_offline")
        .cloned()
        .unwrap();
    assert_eq!(a["acknowledged_by"], "supervisor");
    assert_eq!(s.kinds("alarm_ack").len(), 1);
    // Search sees the refused pass.
    let (_, found) = s
        .call(
            Method::GET,
            "/api/v1/passes?plate=豫A777*&decision=deny",
            Some(&insp),
            None,
        )
        .await;
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["items"][0]["lane"], "1-in");
    let (_, none) = s
        .call(
            Method::GET,
            "/api/v1/passes?plate=豫A77777&decision=allow",
            Some(&insp),
            None,
        )
        .await;
    assert_eq!(none["total"], 0, "{none}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_inspection_and_tonnage_are_served_from_src_report() {
    let s = start("").await;
    let env = s.login("envmgr").await;
    let insp = s.login("inspector").await;
    denied_vehicle(&s, "豫A66666", 31).await;
    let today = ecogate::ledger::local_time(chrono::Utc::now())[..10].to_string();

    let (st, rep) = s
        .call(
            Method::GET,
            &format!("/api/v1/reports/summary?day={today}"),
            Some(&insp),
            None,
        )
        .await;
    assert_eq!(st, 200, "{rep}");
    assert_eq!(rep["first_day"], today.as_str());
    for (fmt, ctype) in [
        ("csv", "text/csv; charset=utf-8"),
        (
            "xlsx",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ),
    ] {
        let r = s
            .http
            .get(format!(
                "{}/api/v1/reports/summary?day={today}&format={fmt}",
                s.base
            ))
            .bearer_auth(&insp)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{fmt}");
        assert_eq!(r.headers()["content-type"], ctype);
        assert!(!r.bytes().await.unwrap().is_empty());
    }
    let (st, v) = s
        .call(
            Method::GET,
            "/api/v1/reports/summary?from=2026-13-01&to=2026-12-01",
            Some(&insp),
            None,
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("from"));
    let (st, v) = s
        .call(
            Method::GET,
            &format!("/api/v1/reports/summary?day={today}&format=pdf"),
            Some(&insp),
            None,
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("format"));

    let (st, i) = s
        .call(
            Method::GET,
            &format!("/api/v1/inspection?day={today}&sample=5&seed=42"),
            Some(&insp),
            None,
        )
        .await;
    assert_eq!(st, 200, "{i}");
    assert_eq!(i["seed"], 42);

    let (st, v) = s
        .call(Method::POST, "/api/v1/transport-tonnage", Some(&env),
            Some(json!({"date": today, "mode": "rail", "cargo": "铁矿石", "tonnes": 1250.5, "note": "铁路到货"})))
        .await;
    assert_eq!(st, 201, "{v}");
    let t = s.kinds("transport_tonnage").pop().unwrap();
    assert_eq!(body(&t)["operator"], "envmgr");
    let (st, list) = s
        .call(
            Method::GET,
            &format!("/api/v1/transport-tonnage?from={today}&to={today}"),
            Some(&insp),
            None,
        )
        .await;
    assert_eq!(st, 200, "{list}");
    assert_eq!(list[0]["cargo"], "铁矿石");
    let (st, v) = s
        .call(
            Method::POST,
            "/api/v1/transport-tonnage",
            Some(&env),
            Some(json!({"date": today, "mode": "boat", "cargo": "煤", "tonnes": 1})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("mode"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_pushes_from_outside_the_allow_list_are_refused_and_not_recorded() {
    let s = start("[http]\nlisten = \"127.0.0.1:0\"\ningest_allow = [\"10.0.0.0/8\"]\n").await;
    let mut p = VzPlate::new("豫A12345", 1);
    p.image_bytes = 100;
    let r = s.camera().vz_plate(&p).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.kinds("pass_attempt").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_pushes_need_the_ingest_token() {
    std::env::set_var("ECOGATE_API_TEST_INGEST_TOKEN", "t0ken-abc");
    let s = start(
        "[http]\nlisten = \"127.0.0.1:0\"\ningest_allow = [\"127.0.0.1/32\", \"::1/128\"]\ningest_token_env = \"ECOGATE_API_TEST_INGEST_TOKEN\"\n",
    )
    .await;
    let p = VzPlate::new("豫A12345", 1);
    for url in ["/ingest/vz/cam1", "/ingest/vz/cam1?token=wrong"] {
        let r = CameraSim::new(format!("{}{url}", s.base))
            .vz_plate(&p)
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{url}: {}", r.body);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.kinds("pass_attempt").is_empty());
    let r = CameraSim::new(format!("{}/ingest/vz/cam1?token=t0ken-abc", s.base))
        .vz_plate(&p)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    wait("the pass", || s.kinds("pass_attempt").pop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_openapi_document_is_the_file_and_lists_every_route() {
    let s = start("").await;
    let served = s
        .http
        .get(format!("{}/api/v1/openapi.json", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let file = std::fs::read_to_string("docs/openapi.json").unwrap();
    assert_eq!(served, file);
    let doc: Value = serde_json::from_str(&file).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    let routes = ecogate::api::route_table();
    for (m, p) in &routes {
        assert!(
            paths.get(*p).and_then(|x| x.get(*m)).is_some(),
            "docs/openapi.json lacks {m} {p}"
        );
    }
    let mut documented = 0;
    for (p, ops) in paths {
        for m in ops.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&m.as_str()) {
                documented += 1;
                assert!(
                    routes.contains(&(m.as_str(), p.as_str())),
                    "docs/openapi.json documents {m} {p}, which the router lacks"
                );
            }
        }
    }
    assert_eq!(documented, routes.len());
    // docs/api.md names every route too.
    let md = std::fs::read_to_string("docs/api.md").unwrap();
    for (m, p) in &routes {
        let line = format!("{} {p}", m.to_uppercase());
        assert!(md.contains(&line), "docs/api.md lacks `{line}`");
    }
}

#[test]
fn user_cli_adds_lists_and_changes_passwords_without_echoing_them() {
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_ecogate");
    let out = std::process::Command::new(exe)
        .args(["user", "add", "--data-dir"])
        .arg(dir.path())
        .args([
            "--username",
            "admin",
            "--role",
            "admin",
            "--display-name",
            "系统管理员",
        ])
        .args(["--password-env", "ECOGATE_TEST_PW"])
        .env("ECOGATE_TEST_PW", "cli-secret-1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("cli-secret-1"), "{all}");

    // Password from stdin.
    let mut child = std::process::Command::new(exe)
        .args(["user", "passwd", "--data-dir"])
        .arg(dir.path())
        .args(["--username", "admin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"cli-secret-2\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("cli-secret-2"));

    let store = ecogate::api::auth::UserStore::open(dir.path()).unwrap();
    assert!(store
        .authenticate("admin", "cli-secret-2")
        .unwrap()
        .is_some());
    assert!(store
        .authenticate("admin", "cli-secret-1")
        .unwrap()
        .is_none());

    let out = std::process::Command::new(exe)
        .args(["user", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "admin\tadmin\t系统管理员\n"
    );
    let bad = std::process::Command::new(exe)
        .args(["user", "add", "--data-dir"])
        .arg(dir.path())
        .args([
            "--username",
            "x",
            "--role",
            "boss",
            "--password-env",
            "ECOGATE_TEST_PW",
        ])
        .env("ECOGATE_TEST_PW", "whatever1")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--role"));

    let changes: Vec<Value> = LedgerReader::open(dir.path())
        .unwrap()
        .events_after(0, 100)
        .unwrap()
        .iter()
        .filter(|e| e.kind == "user_change")
        .map(body)
        .collect();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0]["op"], "create");
    assert_eq!(changes[1]["op"], "password");
    assert!(changes.iter().all(|c| c["actor"] == "cli"));
}
