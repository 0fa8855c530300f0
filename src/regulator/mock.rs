//! A strict mock of a transportControl platform, driven by the same profile as the client.
//! It refuses what a real platform would (missing or empty fields, codes outside the tables,
//! bad times, photos for unknown records, expired tokens), can be told to fail (HTTP 503, slow
//! answers, token expiry, connections reset mid-request before or after the record was taken),
//! and keeps what it accepted so tests can hold it against the ledger. Listens on 127.0.0.1
//! only.

use super::profile::{PhotoEncoding, PlatformProfile};
use super::transport_control::is_base64;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Counters and contents of the mock, as seen by a test.
#[derive(Debug, Clone, Default)]
pub struct MockStats {
    /// Accepted record values in the order they arrived (first copy of each serial).
    pub records: Vec<Value>,
    /// Accepted photo values (first copy of each serial + index).
    pub photos: Vec<Value>,
    /// Records received again with an already accepted serial (answered as success).
    pub duplicate_records: u64,
    /// The serial of each record received again, in order.
    pub duplicate_serials: Vec<String>,
    pub duplicate_photos: u64,
    /// Refusal messages, in order.
    pub rejections: Vec<String>,
    pub logins: u64,
    /// Requests answered with an injected fault.
    pub faults_served: u64,
    pub token_refusals: u64,
    /// Accepted cargo records (kaifeng; transportControl shareGoodsRecord when served).
    pub cargo: Vec<Value>,
    /// hebei: exits accepted without a throughId.
    pub unpaired_exits: u64,
    /// kaifeng: serials issued by /transport/check.
    pub issued_serials: Vec<String>,
}

#[derive(Default)]
struct Faults {
    down: bool,
    fail_next: u32,
    delay: Duration,
    /// The next N requests: the connection is reset before the request is looked at.
    reset_next: u32,
    /// The next N requests are processed (a record is kept) and then the connection is reset
    /// instead of answering: the client cannot know it got through.
    reset_after_next: u32,
}

/// A connection whose socket the handler can kill: once `kill` is set, reads and writes fail
/// and the socket closes with RST (zero linger), so the client sees a reset mid-request.
struct ResetStream {
    inner: tokio::net::TcpStream,
    kill: Arc<AtomicBool>,
}

fn reset_err() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "injected connection reset",
    )
}

impl AsyncRead for ResetStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.kill.load(Ordering::SeqCst) {
            return Poll::Ready(Err(reset_err()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResetStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.kill.load(Ordering::SeqCst) {
            return Poll::Ready(Err(reset_err()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.kill.load(Ordering::SeqCst) {
            return Poll::Ready(Err(reset_err()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.kill.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct ResetListener(tokio::net::TcpListener);

impl axum::serve::Listener for ResetListener {
    type Io = ResetStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ResetStream, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((inner, addr)) => {
                    // Closing a killed connection must be a reset, not an orderly FIN.
                    let _ = inner.set_zero_linger();
                    let _ = inner.set_nodelay(true);
                    let kill = Arc::new(AtomicBool::new(false));
                    return (ResetStream { inner, kill }, addr);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "mock platform: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// The handler's hold on its own connection.
#[derive(Clone)]
struct ConnKill(Arc<AtomicBool>);

impl Connected<axum::serve::IncomingStream<'_, ResetListener>> for ConnKill {
    fn connect_info(s: axum::serve::IncomingStream<'_, ResetListener>) -> Self {
        ConnKill(s.io().kill.clone())
    }
}

pub(super) struct Inner {
    pub(super) profile: Arc<PlatformProfile>,
    pub(super) token_ttl: Duration,
    pub(super) credentials: Option<(String, String)>,
    pub(super) organ: Option<String>,
    pub(super) tokens: HashMap<String, Instant>,
    pub(super) next_token: u64,
    faults: Faults,
    pub(super) serials: HashSet<String>,
    /// When each accepted serial first arrived (latency figures).
    pub(super) arrivals: HashMap<String, Instant>,
    photo_keys: HashSet<(String, String)>,
    pub(super) stats: MockStats,
    pub(super) down: DownState,
    /// The secret a `static_token` / `signed` request or a hebei login must prove.
    pub(super) secret: Option<String>,
    pub(super) kaifeng: super::mock_kaifeng::KaifengState,
    pub(super) hebei: super::mock_hebei::HebeiState,
}

/// A vehicle as the mock platform's check answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockVehicle {
    pub control: bool,
    pub reason: String,
    /// Stage and fuel codes as sent (`"4"`, `"B"`); empty: not sent.
    pub stage: String,
    pub fuel: String,
    /// GA 24.4 type code; empty: not sent.
    pub vehicle_type: String,
}

impl MockVehicle {
    pub fn allowed(stage: &str, fuel: &str) -> MockVehicle {
        MockVehicle {
            control: false,
            reason: String::new(),
            stage: stage.into(),
            fuel: fuel.into(),
            vehicle_type: String::new(),
        }
    }

    pub fn controlled(reason: &str) -> MockVehicle {
        MockVehicle {
            control: true,
            reason: reason.into(),
            stage: String::new(),
            fuel: String::new(),
            vehicle_type: String::new(),
        }
    }
}

/// One vehicle check the mock answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockCheck {
    pub plate: String,
    pub color: String,
    pub gate: String,
}

/// One putdcstatus entry as received.
#[derive(Debug, Clone)]
pub struct MockHeartbeat {
    pub barrier: String,
    pub camera: String,
    pub at: Instant,
}

/// The downlink side of the mock: what it answers and what it was told.
pub(super) struct DownState {
    pub(super) vehicles: HashMap<String, MockVehicle>,
    pub(super) checks: Vec<MockCheck>,
    heartbeats: HashMap<String, Vec<MockHeartbeat>>,
    gate_reports: Vec<Value>,
    policy: Value,
    white_list: Value,
    policy_queries: u64,
}

impl Default for DownState {
    fn default() -> Self {
        DownState {
            vehicles: HashMap::new(),
            checks: Vec::new(),
            heartbeats: HashMap::new(),
            gate_reports: Vec::new(),
            policy: Value::Array(Vec::new()),
            white_list: Value::Array(Vec::new()),
            policy_queries: 0,
        }
    }
}

type Shared = Arc<Mutex<Inner>>;

fn lock(s: &Shared) -> MutexGuard<'_, Inner> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct MockPlatform {
    addr: SocketAddr,
    inner: Shared,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("refusing to listen on {0}: the mock platform listens on 127.0.0.1 only")]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl MockPlatform {
    /// Binds `listen` (127.0.0.1, port 0 for any) and serves until dropped.
    pub async fn start(
        profile: PlatformProfile,
        listen: SocketAddr,
    ) -> Result<MockPlatform, MockError> {
        if !listen.ip().is_loopback() || listen.is_ipv6() {
            return Err(MockError::NotLoopback(listen));
        }
        let listener =
            tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| MockError::Bind {
                    addr: listen,
                    source: e,
                })?;
        let addr = listener.local_addr().map_err(|e| MockError::Bind {
            addr: listen,
            source: e,
        })?;
        let inner = Arc::new(Mutex::new(Inner {
            token_ttl: Duration::from_secs(profile.auth.token_ttl_secs),
            profile: Arc::new(profile),
            credentials: None,
            organ: None,
            tokens: HashMap::new(),
            next_token: 0,
            faults: Faults::default(),
            serials: HashSet::new(),
            arrivals: HashMap::new(),
            photo_keys: HashSet::new(),
            stats: MockStats::default(),
            down: DownState::default(),
            secret: None,
            kaifeng: Default::default(),
            hebei: Default::default(),
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone())
            .into_make_service_with_connect_info::<ConnKill>();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let r = axum::serve(ResetListener(listener), app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "mock platform stopped");
            }
        });
        Ok(MockPlatform {
            addr,
            inner,
            shutdown: Some(tx),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Only this username/password may log in (default: any).
    pub fn require_credentials(&self, user: &str, password: &str) {
        lock(&self.inner).credentials = Some((user.into(), password.into()));
    }

    /// Only this organ / enterprise code is accepted (default: any non-empty).
    pub fn require_organ(&self, organ: &str) {
        lock(&self.inner).organ = Some(organ.into());
    }

    /// Every request answers HTTP 503 while down.
    pub fn set_down(&self, down: bool) {
        lock(&self.inner).faults.down = down;
    }

    /// The next `n` requests answer HTTP 503.
    pub fn fail_next(&self, n: u32) {
        lock(&self.inner).faults.fail_next = n;
    }

    /// Every answer waits this long first (longer than the client timeout = a timeout).
    pub fn set_delay(&self, d: Duration) {
        lock(&self.inner).faults.delay = d;
    }

    /// The next `n` requests have their connection reset before they are processed.
    pub fn reset_next(&self, n: u32) {
        lock(&self.inner).faults.reset_next = n;
    }

    /// The next `n` requests are processed, then their connection is reset instead of
    /// answering (a record is kept; the client must send it again, with the same serial).
    pub fn reset_after_next(&self, n: u32) {
        lock(&self.inner).faults.reset_after_next = n;
    }

    /// The secret of `static_token` / `signed` auth and the hebei `Client_secret`.
    pub fn require_secret(&self, secret: &str) {
        lock(&self.inner).secret = Some(secret.into());
    }

    /// kaifeng: answer a pass received again with the "duplicate serial" refusal of the profile
    /// (`duplicate_messages`) instead of success.
    pub fn duplicate_replies(&self, on: bool) {
        lock(&self.inner).kaifeng.duplicate_replies = on;
    }

    /// kaifeng: the next `n` pass uploads are processed (kept) and then answered HTTP 503, as
    /// if the answer was lost: the client must send them again under the same serial.
    pub fn lose_pass_answers(&self, n: u32) {
        lock(&self.inner).kaifeng.lose_pass_answers = n;
    }

    pub fn set_token_ttl(&self, d: Duration) {
        lock(&self.inner).token_ttl = d;
    }

    /// Forget every issued token: the next call with one is refused as expired.
    pub fn expire_tokens(&self) {
        lock(&self.inner).tokens.clear();
    }

    /// When the record with `serial` was first accepted.
    pub fn arrival(&self, serial: &str) -> Option<Instant> {
        lock(&self.inner).arrivals.get(serial).copied()
    }

    /// Records accepted so far (cheap; [`MockPlatform::stats`] copies every record).
    pub fn accepted(&self) -> usize {
        lock(&self.inner).stats.records.len()
    }

    /// What arrived after the first `records`, `photos` and `rejections` items (the console
    /// prints only what is new, without copying everything each time).
    pub fn since(
        &self,
        records: usize,
        photos: usize,
        rejections: usize,
    ) -> (Vec<Value>, Vec<Value>, Vec<String>) {
        let g = lock(&self.inner);
        let s = &g.stats;
        (
            s.records.iter().skip(records).cloned().collect(),
            s.photos.iter().skip(photos).cloned().collect(),
            s.rejections.iter().skip(rejections).cloned().collect(),
        )
    }

    pub fn stats(&self) -> MockStats {
        lock(&self.inner).stats.clone()
    }

    /// How the vehicle check answers for `plate` (any colour). Unknown plates are answered
    /// "not controlled" with no stage or fuel, as a platform without a record does.
    pub fn set_vehicle(&self, plate: &str, v: MockVehicle) {
        lock(&self.inner).down.vehicles.insert(plate.into(), v);
    }

    pub fn remove_vehicle(&self, plate: &str) {
        lock(&self.inner).down.vehicles.remove(plate);
    }

    /// The `value` the policy query answers with (default: an empty list). Anything goes, so
    /// tests can send garbled replies.
    pub fn set_policy_reply(&self, v: Value) {
        lock(&self.inner).down.policy = v;
    }

    /// The `value` the white-list query answers with (default: an empty list).
    pub fn set_white_list_reply(&self, v: Value) {
        lock(&self.inner).down.white_list = v;
    }

    /// Vehicle checks answered, in order.
    pub fn checks(&self) -> Vec<MockCheck> {
        lock(&self.inner).down.checks.clone()
    }

    /// putdcstatus entries accepted, by 道闸编号, in arrival order.
    pub fn heartbeats(&self) -> HashMap<String, Vec<MockHeartbeat>> {
        lock(&self.inner).down.heartbeats.clone()
    }

    /// gateStatusReport values accepted, in order.
    pub fn gate_reports(&self) -> Vec<Value> {
        lock(&self.inner).down.gate_reports.clone()
    }

    /// Policy and white-list queries answered.
    pub fn policy_queries(&self) -> u64 {
        lock(&self.inner).down.policy_queries
    }

    /// One-line summary for the `ecogate sim platform` console.
    pub fn summary(&self) -> String {
        let g = lock(&self.inner);
        let s = &g.stats;
        format!(
            "records {} (duplicates {}), photos {} (duplicates {}), refused {}, logins {}, faults served {}, down {}, fail-next {}, reset-next {}, reset-after-next {}, delay {} ms",
            s.records.len(),
            s.duplicate_records,
            s.photos.len(),
            s.duplicate_photos,
            s.rejections.len(),
            s.logins,
            s.faults_served,
            g.faults.down,
            g.faults.fail_next,
            g.faults.reset_next,
            g.faults.reset_after_next,
            g.faults.delay.as_millis()
        )
    }
}

impl Drop for MockPlatform {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn reply(code: &str, p: &PlatformProfile, message: &str, extra: Option<(&str, Value)>) -> Response {
    let mut m = Map::new();
    m.insert(p.reply.code.clone(), Value::String(code.into()));
    m.insert(p.reply.message.clone(), Value::String(message.into()));
    if let Some((k, v)) = extra {
        m.insert(k.into(), v);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        Value::Object(m).to_string(),
    )
        .into_response()
}

async fn handle(
    State(st): State<Shared>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let delay = lock(&st).faults.delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut g = lock(&st);
    if g.faults.reset_next > 0 {
        g.faults.reset_next -= 1;
        g.stats.faults_served += 1;
        conn.0.store(true, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let reset_after = g.faults.reset_after_next > 0;
    if reset_after {
        g.faults.reset_after_next -= 1;
        g.stats.faults_served += 1;
    }
    if g.faults.down || g.faults.fail_next > 0 {
        g.faults.fail_next = g.faults.fail_next.saturating_sub(1);
        g.stats.faults_served += 1;
        return (StatusCode::SERVICE_UNAVAILABLE, "injected fault").into_response();
    }
    let protocol = g.profile.protocol;
    if protocol != super::profile::Protocol::TransportControl {
        let r = match protocol {
            super::profile::Protocol::Kaifeng => {
                super::mock_kaifeng::handle(&mut g, uri.path(), &headers, &body)
            }
            _ => super::mock_hebei::handle(&mut g, uri.path(), &headers, &body),
        };
        if reset_after {
            conn.0.store(true, Ordering::SeqCst);
        }
        return r;
    }
    let (code, msg, extra) = match process(&mut g, uri.path(), &body) {
        Ok(extra) => ("200".to_string(), "ok".to_string(), extra),
        Err((code, msg)) => {
            if code == "401" {
                g.stats.token_refusals += 1;
            } else {
                g.stats.rejections.push(msg.clone());
            }
            (code.to_string(), msg, None)
        }
    };
    if reset_after {
        // Processed; the answer is lost with the connection.
        conn.0.store(true, Ordering::SeqCst);
    }
    let p = &g.profile;
    reply(
        &code,
        p,
        &msg,
        extra.as_ref().map(|(k, v)| (k.as_str(), v.clone())),
    )
}

type Refusal = (&'static str, String);

fn text<'a>(obj: &'a Map<String, Value>, key: &str, what: &str) -> Result<&'a str, Refusal> {
    match obj.get(key) {
        None => Err(("400", format!("{what}: missing field `{key}`"))),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(("400", format!("{what}: field `{key}` is empty")))
        }
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err((
            "400",
            format!("{what}: field `{key}` must be a string, not {v}"),
        )),
    }
}

/// The value of a logical field, checking every alias is present and agrees.
fn field<'a>(
    obj: &'a Map<String, Value>,
    names: &[String],
    logical: &str,
    what: &str,
) -> Result<&'a str, Refusal> {
    let mut first: Option<&str> = None;
    for n in names {
        let v = text(obj, n, what)?;
        match first {
            None => first = Some(v),
            Some(f) if f != v => {
                return Err((
                    "400",
                    format!(
                        "{what}: `{n}` = `{v}` disagrees with `{}` = `{f}`",
                        names[0]
                    ),
                ))
            }
            _ => {}
        }
    }
    first.ok_or(("400", format!("{what}: no name for `{logical}`")))
}

fn in_table(
    v: &str,
    table: &std::collections::BTreeMap<String, String>,
    key: &str,
    what: &str,
) -> Result<(), Refusal> {
    if table.values().any(|c| c == v) {
        Ok(())
    } else {
        let mut codes: Vec<&str> = table.values().map(String::as_str).collect();
        codes.sort();
        codes.dedup();
        Err((
            "400",
            format!(
                "{what}: `{key}` = `{v}` is not a known code ({})",
                codes.join(", ")
            ),
        ))
    }
}

fn process(g: &mut Inner, path: &str, body: &[u8]) -> Result<Option<(String, Value)>, Refusal> {
    let p = g.profile.clone();
    let env: Map<String, Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(("400", "request body is not a JSON object".into())),
        Err(e) => return Err(("400", format!("request body is not JSON: {e}"))),
    };
    let organ = text(&env, &p.envelope.organ, "envelope")?.to_string();
    if let Some(want) = &g.organ {
        if *want != organ {
            return Err(("403", format!("unknown organ `{organ}`")));
        }
    }
    let op = text(&env, &p.envelope.operation, "envelope")?.to_string();
    if op == p.operations.login {
        if path != p.paths.login {
            return Err(("404", format!("{op} is not served at {path}")));
        }
        let place = match p.auth.credentials {
            super::profile::CredentialPlace::Top => &env,
            super::profile::CredentialPlace::Value => env
                .get(&p.envelope.value)
                .and_then(Value::as_object)
                .ok_or((
                    "400",
                    format!("login: missing object `{}`", p.envelope.value),
                ))?,
        };
        let user = text(place, &p.auth.username, "login")?;
        let pass = place
            .get(&p.auth.password)
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some((u, pw)) = &g.credentials {
            if u != user || pw != pass {
                return Err(("403", "wrong username or password".into()));
            }
        }
        g.next_token += 1;
        let token = format!("mock-token-{}", g.next_token);
        let until = Instant::now() + g.token_ttl;
        g.tokens.insert(token.clone(), until);
        g.stats.logins += 1;
        return Ok(Some((p.reply.token.clone(), Value::String(token))));
    }
    let token = text(&env, &p.envelope.token, "envelope")?;
    match g.tokens.get(token) {
        Some(until) if Instant::now() < *until => {}
        Some(_) => return Err(("401", "access_token expired".into())),
        None => return Err(("401", "access_token invalid or expired".into())),
    }
    if let Some(d) = &p.downlink {
        if let Some(r) = downlink_op(g, &p, d, &op, path, &env, &organ) {
            return r;
        }
    }
    let value = env
        .get(&p.envelope.value)
        .and_then(Value::as_object)
        .ok_or(("400", format!("missing object `{}`", p.envelope.value)))?;
    if op == p.operations.record {
        if path != p.paths.record {
            return Err(("404", format!("{op} is not served at {path}")));
        }
        check_record(&p, value, &organ)?;
        let serial = field(value, &p.record.fields["serial"], "serial", &op)?.to_string();
        if g.serials.contains(&serial) {
            g.stats.duplicate_records += 1;
            g.stats.duplicate_serials.push(serial);
        } else {
            g.arrivals.insert(serial.clone(), Instant::now());
            g.serials.insert(serial);
            g.stats.records.push(Value::Object(value.clone()));
        }
        Ok(None)
    } else if p.cargo.as_ref().is_some_and(|c| c.operation == op) {
        super::mock_cargo::share_goods_record(g, path, &op, value, &organ)
    } else if op == p.operations.photo {
        if path != p.paths.photo {
            return Err(("404", format!("{op} is not served at {path}")));
        }
        let f = &p.photo.fields;
        let mut vals = HashMap::new();
        for (k, names) in f {
            vals.insert(k.as_str(), field(value, names, k, &op)?);
        }
        let serial = vals.get("serial").copied().unwrap_or("");
        if !g.serials.contains(serial) {
            return Err((
                "400",
                format!("{op}: no driving record with serial `{serial}`"),
            ));
        }
        if let Some(c) = vals.get("plate_color") {
            in_table(c, &p.codes.plate_color, "plate_color", &op)?;
        }
        if let Some(k) = vals.get("kind") {
            in_table(k, &p.codes.photo_kind, "kind", &op)?;
        }
        let index = vals.get("index").copied().unwrap_or("");
        if index.parse::<u32>().map_or(true, |n| n == 0) {
            return Err(("400", format!("{op}: photo index `{index}` is not 1, 2, …")));
        }
        if let Some(img) = vals.get("image") {
            let ok = match p.photo.encoding {
                PhotoEncoding::Base64 | PhotoEncoding::Url => is_base64(img),
                PhotoEncoding::DataUri => img
                    .strip_prefix("data:image/jpeg;base64,")
                    .is_some_and(is_base64),
            };
            if !ok {
                return Err(("400", format!("{op}: image is not {:?}", p.photo.encoding)));
            }
        }
        if let Some(t) = vals.get("time") {
            check_time(&p, t, &op)?;
        }
        let key = (serial.to_string(), index.to_string());
        if g.photo_keys.contains(&key) {
            g.stats.duplicate_photos += 1;
        } else {
            g.photo_keys.insert(key);
            g.stats.photos.push(Value::Object(value.clone()));
        }
        Ok(None)
    } else {
        Err(("400", format!("unknown {} `{op}`", p.envelope.operation)))
    }
}

type Answer = Result<Option<(String, Value)>, Refusal>;

/// The downlink operations of the profile's `[downlink]`; None when `op` is not one of them.
fn downlink_op(
    g: &mut Inner,
    p: &PlatformProfile,
    d: &super::downlink::DownlinkShape,
    op: &str,
    path: &str,
    env: &Map<String, Value>,
    organ: &str,
) -> Option<Answer> {
    let served = |want: &str| -> Result<(), Refusal> {
        if path == want {
            Ok(())
        } else {
            Err(("404", format!("{op} is not served at {path}")))
        }
    };
    let object = || -> Result<&Map<String, Value>, Refusal> {
        env.get(&p.envelope.value)
            .and_then(Value::as_object)
            .ok_or((
                "400",
                format!("{op}: missing object `{}`", p.envelope.value),
            ))
    };
    let value_key = p.envelope.value.clone();
    if let Some(c) = d.check.as_ref().filter(|c| c.operation == op) {
        return Some((|| {
            served(&c.path)?;
            let v = object()?;
            let mut vals = HashMap::new();
            for (k, names) in &c.request {
                vals.insert(k.as_str(), field(v, names, k, op)?.to_string());
            }
            if let Some(col) = vals.get("plate_color") {
                in_table(col, &p.codes.plate_color, "plate_color", op)?;
            }
            if let Some(e) = vals.get("enterprise") {
                if e != organ {
                    return Err((
                        "400",
                        format!("{op}: enterprise `{e}` is not the organ `{organ}`"),
                    ));
                }
            }
            let plate = vals.get("plate").cloned().unwrap_or_default();
            g.down.checks.push(MockCheck {
                plate: plate.clone(),
                color: vals.get("plate_color").cloned().unwrap_or_default(),
                gate: vals.get("gate").cloned().unwrap_or_default(),
            });
            let known = g.down.vehicles.get(&plate).cloned();
            let r = &c.reply;
            let mut out = Map::new();
            let v = known.unwrap_or(MockVehicle::allowed("", ""));
            let control = if v.control { &r.deny[0] } else { &r.allow[0] };
            out.insert(r.control.clone(), Value::String(control.clone()));
            out.insert(r.reason.clone(), Value::String(v.reason.clone()));
            for (names, val) in [
                (&r.stage, &v.stage),
                (&r.fuel, &v.fuel),
                (&r.vehicle_type, &v.vehicle_type),
            ] {
                if let (Some(n), false) = (names.first(), val.is_empty()) {
                    out.insert(n.clone(), Value::String(val.clone()));
                }
            }
            Ok(Some((value_key, Value::Object(out))))
        })());
    }
    if let Some(h) = d.heartbeat.as_ref().filter(|h| h.operation == op) {
        return Some((|| {
            served(&h.path)?;
            let entries = env
                .get(&p.envelope.value)
                .and_then(Value::as_array)
                .filter(|a| !a.is_empty())
                .ok_or((
                    "400",
                    format!("{op}: `{}` must be a non-empty list", p.envelope.value),
                ))?;
            let mut got = Vec::new();
            for e in entries {
                let e = e
                    .as_object()
                    .ok_or(("400", format!("{op}: entry {e} is not an object")))?;
                let mut vals = HashMap::new();
                for (k, names) in &h.fields {
                    let v = field(e, names, k, op)?;
                    if k != "gate" && v != h.ok && v != h.fault {
                        return Err((
                            "400",
                            format!("{op}: `{k}` = `{v}` is neither {} nor {}", h.ok, h.fault),
                        ));
                    }
                    vals.insert(k.as_str(), v.to_string());
                }
                got.push(vals);
            }
            let now = Instant::now();
            for vals in got {
                let gate = vals.get("gate").cloned().unwrap_or_default();
                g.down
                    .heartbeats
                    .entry(gate)
                    .or_default()
                    .push(MockHeartbeat {
                        barrier: vals.get("barrier").cloned().unwrap_or_default(),
                        camera: vals.get("camera").cloned().unwrap_or_default(),
                        at: now,
                    });
            }
            Ok(None)
        })());
    }
    if let Some(s) = d.gate_status.as_ref().filter(|s| s.operation == op) {
        return Some((|| {
            served(&s.path)?;
            let v = object()?;
            for (k, names) in &s.fields {
                let x = field(v, names, k, op)?;
                if k == "time" {
                    check_time(p, x, op)?;
                }
            }
            g.down.gate_reports.push(Value::Object(v.clone()));
            Ok(None)
        })());
    }
    for (query, reply) in [
        (
            d.policy
                .as_ref()
                .map(|q| (&q.path, &q.operation, &q.request)),
            0,
        ),
        (
            d.white_list
                .as_ref()
                .map(|q| (&q.path, &q.operation, &q.request)),
            1,
        ),
    ] {
        if let Some((qpath, _, request)) = query.filter(|(_, o, _)| o.as_str() == op) {
            return Some((|| {
                served(qpath)?;
                let v = object()?;
                for (k, names) in request {
                    field(v, names, k, op)?;
                }
                g.down.policy_queries += 1;
                let answer = if reply == 0 {
                    g.down.policy.clone()
                } else {
                    g.down.white_list.clone()
                };
                Ok(Some((value_key.clone(), answer)))
            })());
        }
    }
    None
}

fn check_time(p: &PlatformProfile, t: &str, what: &str) -> Result<(), Refusal> {
    chrono::NaiveDateTime::parse_from_str(t, &p.time.format)
        .map(|_| ())
        .map_err(|e| {
            (
                "400",
                format!("{what}: time `{t}` is not `{}` ({e})", p.time.format),
            )
        })
}

fn check_record(p: &PlatformProfile, v: &Map<String, Value>, organ: &str) -> Result<(), Refusal> {
    let what = p.operations.record.as_str();
    let mut vals = HashMap::new();
    for (k, names) in &p.record.fields {
        vals.insert(k.as_str(), field(v, names, k, what)?);
    }
    let get = |k: &str| vals.get(k).copied();
    if let Some(c) = get("plate_color") {
        in_table(c, &p.codes.plate_color, "plate_color", what)?;
    }
    if let Some(c) = get("direction") {
        in_table(c, &p.codes.direction, "direction", what)?;
    }
    if let Some(c) = get("barrier") {
        in_table(c, &p.codes.barrier, "barrier", what)?;
    }
    if let Some(c) = get("backfill") {
        in_table(c, &p.codes.backfill, "backfill", what)?;
    }
    if let Some(s) = get("stage") {
        if !["0", "1", "2", "3", "4", "5", "6", "7", "D", "X"].contains(&s) {
            return Err((
                "400",
                format!("{what}: emission stage `{s}` is not 0-7, D or X"),
            ));
        }
    }
    if let Some(f) = get("fuel") {
        let ok = f.len() == 1 && "ABCDEFLMNOPQYZ".contains(f);
        if !ok {
            return Err(("400", format!("{what}: fuel `{f}` is not a GA 24.9 letter")));
        }
    }
    if let Some(t) = get("time") {
        check_time(p, t, what)?;
    }
    if let Some(e) = get("enterprise") {
        if e != organ {
            return Err((
                "400",
                format!("{what}: enterprise `{e}` is not the organ `{organ}`"),
            ));
        }
    }
    for (k, c) in &p.record.constants {
        if v.get(k) != Some(c) {
            return Err(("400", format!("{what}: `{k}` must be {c}")));
        }
    }
    Ok(())
}

/// For the console: the envelope of a record, as a client would send it (used by tests).
pub fn envelope(p: &PlatformProfile, organ: &str, op: &str, token: &str, value: Value) -> Value {
    json!({
        p.envelope.organ.as_str(): organ,
        p.envelope.operation.as_str(): op,
        p.envelope.token.as_str(): token,
        p.envelope.value.as_str(): value,
    })
}
