//! The operator HTTP API, `/api/v1` (docs/api.md, docs/openapi.json): sessions and roles,
//! live lanes (with SSE), devices, alarms, measures, uplink KPIs, ledger search, registries,
//! the manual-release workflow and plate correction. Built from the parts of a running site
//! ([`ApiParts`]) by `ecogate run` and `ecogate demo`, and merged into their HTTP listener.

pub mod auth;
pub mod cli;
pub mod console;
mod corrections;
pub mod error;
pub mod ingest;
mod ledger_api;
pub mod release;
mod reports;
mod users;

use crate::config::Plan;
use crate::decide::SiteDecider;
use crate::ledger::store::{EventRecord, LedgerReader};
use crate::ledger::Ledger;
use crate::regulator::KpiReader;
use crate::runtime::LaneHandle;
use auth::{AuthUser, Sessions, Throttle, UserStore};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Json;
use chrono::Utc;
use ecogate_drivers::DeviceHealth;
use error::ApiError;
use serde_json::{json, Value};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

pub use error::{ApiJson, ApiQuery};

/// What the API needs from a running site.
pub struct ApiParts {
    pub plan: Arc<Plan>,
    pub lanes: Vec<LaneHandle>,
    pub ledger: Ledger,
    pub decider: Arc<SiteDecider>,
    pub devices: Vec<(String, watch::Receiver<DeviceHealth>)>,
    pub uplinks: Vec<KpiReader>,
    pub alarms: crate::alarm::AlarmBoard,
}

/// A server-sent event for `/lanes/stream`.
#[derive(Debug, Clone)]
pub struct Push {
    pub event: &'static str,
    pub data: Value,
}

pub struct Inner {
    pub plan: Arc<Plan>,
    pub lanes: Vec<LaneHandle>,
    pub ledger: Ledger,
    pub decider: Arc<SiteDecider>,
    pub devices: Vec<(String, watch::Receiver<DeviceHealth>)>,
    pub uplinks: Vec<KpiReader>,
    pub alarms: crate::alarm::AlarmBoard,
    pub users: UserStore,
    pub sessions: Sessions,
    pub throttle: Throttle,
    pub releases: release::Releases,
    pub bus: broadcast::Sender<Push>,
}

#[derive(Clone)]
pub struct ApiState {
    pub inner: Arc<Inner>,
}

impl ApiState {
    /// Opens the users database in the site's data dir and starts the tasks that feed the
    /// live stream (call inside a tokio runtime).
    pub fn new(parts: ApiParts) -> Result<ApiState, auth::AuthError> {
        let users = UserStore::open(&parts.plan.data_dir)?;
        let releases = match LedgerReader::open(parts.ledger.data_dir())
            .and_then(|r| release::Releases::recover(&r, chrono::Utc::now()))
        {
            Ok(r) => r,
            Err(e) => {
                // The console list is a convenience over the ledger; start without it rather
                // than keep the API (and the gate house) down.
                tracing::error!(error = %e, "cannot rebuild release requests from the ledger");
                release::Releases::default()
            }
        };
        let (bus, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            sessions: Sessions::new(parts.plan.console.session_ttl),
            throttle: Throttle::default(),
            releases,
            plan: parts.plan,
            lanes: parts.lanes,
            ledger: parts.ledger,
            decider: parts.decider,
            devices: parts.devices,
            uplinks: parts.uplinks,
            alarms: parts.alarms,
            users,
            bus,
        });
        let state = ApiState { inner };
        state.spawn_feeds();
        Ok(state)
    }

    /// Runs `f` on a fresh read-only ledger connection off the async threads.
    pub async fn read<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&LedgerReader) -> Result<T, ApiError> + Send + 'static,
    {
        let dir = self.inner.ledger.data_dir().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let r = LedgerReader::open(&dir)?;
            f(&r)
        })
        .await
        .map_err(|e| ApiError::internal(format!("ledger reader task: {e}")))?
    }

    pub fn push(&self, event: &'static str, data: Value) {
        // No subscriber is not an error: nobody is watching the console.
        let _ = self.inner.bus.send(Push { event, data });
    }

    fn spawn_feeds(&self) {
        for h in &self.inner.lanes {
            let weak = Arc::downgrade(&self.inner);
            let mut rx = h.status.clone();
            let id = h.id.clone();
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let Some(inner) = weak.upgrade() else { break };
                    // Nobody watching: no need to read the lane's last pass.
                    if inner.bus.receiver_count() == 0 {
                        continue;
                    }
                    let s = ApiState { inner };
                    match s.lane_views(Some(id.clone())).await {
                        Ok(mut v) => {
                            if let Some(v) = v.pop() {
                                s.push("lane", v);
                            }
                        }
                        Err(e) => tracing::warn!(lane = %id, error = %e.message, "lane view"),
                    }
                }
            });
        }
        tokio::spawn(tail_alarms(Arc::downgrade(&self.inner)));
    }

    /// LaneView of every lane (or one), with its last pass from the ledger.
    pub async fn lane_views(&self, only: Option<String>) -> Result<Vec<Value>, ApiError> {
        let ids: Vec<String> = self
            .inner
            .lanes
            .iter()
            .filter(|h| only.as_ref().map_or(true, |o| *o == h.id))
            .map(|h| h.id.clone())
            .collect();
        let lasts = self.read(move |r| ledger_api::last_passes(r, &ids)).await?;
        let plan = &self.inner.plan;
        let mut out = Vec::new();
        for h in &self.inner.lanes {
            if only.as_ref().is_some_and(|o| *o != h.id) {
                continue;
            }
            let status = h.status.borrow().clone();
            let mut v = serde_json::to_value(&status).unwrap_or_else(|_| json!({}));
            if let (Some(obj), Some(l)) = (v.as_object_mut(), plan.lane(&h.id)) {
                let gate = plan.gates.iter().find(|g| g.id == l.spec.gate);
                obj.insert("gate".into(), json!(l.spec.gate));
                obj.insert("direction".into(), json!(l.spec.direction));
                obj.insert(
                    "name".into(),
                    json!(format!(
                        "{} {}",
                        gate.map(|g| g.name.as_str()).unwrap_or(&l.spec.gate),
                        l.spec.direction.chinese()
                    )),
                );
                obj.insert(
                    "last_pass".into(),
                    lasts
                        .get(&h.id)
                        .map(ledger_api::pass_json)
                        .unwrap_or(Value::Null),
                );
            }
            out.push(v);
        }
        Ok(out)
    }

    pub fn lane(&self, id: &str) -> Option<&LaneHandle> {
        self.inner.lanes.iter().find(|l| l.id == id)
    }
}

/// Forwards alarm raises, clears and acknowledgements from the ledger to the live stream.
async fn tail_alarms(weak: Weak<Inner>) {
    let mut after = match weak.upgrade() {
        Some(i) => i.ledger.head().seq,
        None => return,
    };
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.ledger.head().seq <= after {
            continue;
        }
        let s = ApiState { inner };
        let from = after;
        let got = s
            .read(move |r| Ok(r.events_after(from, 1000)?))
            .await
            .unwrap_or_default();
        for e in got {
            after = after.max(e.seq);
            if e.kind == "alarm" || e.kind == "alarm_ack" {
                s.push("alarm", ledger_api::event_json(&e));
            }
        }
    }
}

type Handler = MethodRouter<ApiState>;

/// The single table of API routes: the router is built from it and the OpenAPI test checks
/// docs/openapi.json lists exactly these.
fn table() -> Vec<(&'static str, &'static str, Handler)> {
    vec![
        ("post", "/api/v1/login", post(users::login)),
        ("post", "/api/v1/logout", post(users::logout)),
        ("get", "/api/v1/me", get(users::me)),
        ("get", "/api/v1/users", get(users::list)),
        ("post", "/api/v1/users", post(users::create)),
        (
            "post",
            "/api/v1/users/{username}/password",
            post(users::password),
        ),
        ("get", "/api/v1/site", get(site)),
        ("get", "/api/v1/lanes", get(lanes)),
        ("get", "/api/v1/lanes/stream", get(stream)),
        ("get", "/api/v1/devices", get(devices)),
        ("get", "/api/v1/alarms", get(ledger_api::alarms)),
        ("post", "/api/v1/alarms/ack", post(ledger_api::ack_alarm)),
        ("get", "/api/v1/measures", get(measures)),
        ("get", "/api/v1/uplinks", get(uplinks)),
        ("get", "/api/v1/passes", get(reports::passes)),
        ("get", "/api/v1/passes/{seq}", get(ledger_api::pass_detail)),
        ("get", "/api/v1/photos/{sha256}", get(ledger_api::photo)),
        ("get", "/api/v1/visits", get(ledger_api::visits)),
        ("get", "/api/v1/in-plant", get(ledger_api::in_plant)),
        (
            "get",
            "/api/v1/registries/{kind}",
            get(ledger_api::registry_list),
        ),
        (
            "post",
            "/api/v1/registries/{kind}",
            post(ledger_api::registry_upsert),
        ),
        (
            "delete",
            "/api/v1/registries/{kind}/{key}",
            delete(ledger_api::registry_delete),
        ),
        ("get", "/api/v1/releases", get(release::list)),
        ("post", "/api/v1/releases", post(release::create)),
        (
            "post",
            "/api/v1/releases/{id}/approve",
            post(release::approve),
        ),
        (
            "post",
            "/api/v1/releases/{id}/reject",
            post(release::reject),
        ),
        (
            "post",
            "/api/v1/lanes/{lane}/correct-plate",
            post(release::correct_plate),
        ),
        ("post", "/api/v1/corrections", post(corrections::create)),
        ("get", "/api/v1/reports/releases", get(release::report)),
        ("get", "/api/v1/reports/summary", get(reports::summary)),
        ("get", "/api/v1/inspection", get(reports::inspection)),
        (
            "get",
            "/api/v1/transport-tonnage",
            get(reports::tonnage_list),
        ),
        (
            "post",
            "/api/v1/transport-tonnage",
            post(reports::tonnage_add),
        ),
        ("get", "/api/v1/openapi.json", get(openapi)),
    ]
}

/// `(method, path)` of every API route, for the OpenAPI check.
pub fn route_table() -> Vec<(&'static str, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The OpenAPI document served at `/api/v1/openapi.json` (the file in docs/).
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// The API router with its state, ready to merge into the site's HTTP listener.
pub fn router(state: ApiState) -> axum::Router {
    let mut r: axum::Router<ApiState> = axum::Router::new();
    for (_, path, h) in table() {
        r = r.route(path, h);
    }
    // Not a router-wide fallback: the console (and whatever else shares the listener) keeps
    // its own paths; only unknown `/api/v1/...` paths get the JSON 404.
    r.route("/api/v1/{*rest}", axum::routing::any(api_fallback))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Everything the site serves to operators: the API and the console.
pub fn routes(state: ApiState) -> axum::Router {
    router(state).merge(console::router())
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "`{method} {}` is not a route; see /api/v1/openapi.json",
            uri.path()
        ),
    )
}

async fn api_fallback(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no API route `{}`", uri.path()))
}

/// The OpenAPI document is public: it names no data and no secrets.
async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn site(_u: AuthUser, State(s): State<ApiState>) -> Json<Value> {
    let p = &s.inner.plan;
    let e = &p.enterprise;
    let gates: Vec<Value> = p
        .gates
        .iter()
        .map(|g| {
            json!({
                "id": g.id,
                "name": g.name,
                "lanes": g.lanes.iter().filter_map(|&i| p.lanes.get(i)).map(|l| json!({
                    "id": l.spec.id,
                    "name": format!("{} {}", g.name, l.spec.direction.chinese()),
                    "direction": l.spec.direction,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({
        "site_id": p.site_id,
        "enterprise": {
            "name": e.name,
            "credit_code": e.credit_code,
            "permit_no": e.permit_no,
            "industry": e.industry.name(),
            "grade": e.grade.name(),
            "region": e.region,
        },
        "gates": gates,
        "release_reasons": p.console.release_reasons,
    }))
}

async fn lanes(_u: AuthUser, State(s): State<ApiState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(Value::Array(s.lane_views(None).await?)))
}

async fn stream(
    _u: AuthUser,
    State(s): State<ApiState>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    // Every lane first, so a console that (re)connects has the whole picture.
    let first: Vec<Push> = s
        .lane_views(None)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|data| Push {
            event: "lane",
            data,
        })
        .collect();
    let rx = s.inner.bus.subscribe();
    let initial = futures_util::stream::iter(first);
    let live = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(p) => return Some((p, rx)),
                // A slow client missed some; the next lane change brings it up to date.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    use futures_util::StreamExt as _;
    let events = initial
        .chain(live)
        .map(|p| Ok(Event::default().event(p.event).data(p.data.to_string())));
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn devices(_u: AuthUser, State(s): State<ApiState>) -> Json<Value> {
    let p = &s.inner.plan;
    let out: Vec<Value> = s
        .inner
        .devices
        .iter()
        .map(|(name, h)| {
            let h = h.borrow().clone();
            let d = p.devices.get(name);
            json!({
                "name": name,
                "kind": d.map(|d| d.profile.kind.name()),
                "profile": d.map(|d| d.profile_name.clone()),
                "online": h.online,
                "last_error": h.last_error,
                "rtt_ms": h.rtt.map(|r| r.as_secs_f64() * 1000.0),
                "last_seen": h.last_seen,
                "errors": h.errors,
            })
        })
        .collect();
    Json(Value::Array(out))
}

async fn measures(_u: AuthUser, State(s): State<ApiState>) -> Json<Value> {
    let now = Utc::now();
    let state = s.inner.decider.state();
    let st = state.read().unwrap_or_else(|e| e.into_inner());
    let out: Vec<Value> = st
        .measures()
        .iter()
        .map(|m| {
            let mut v = serde_json::to_value(m).unwrap_or_else(|_| json!({}));
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "in_force".into(),
                    json!(m.start <= now && m.end.map_or(true, |e| now < e)),
                );
            }
            v
        })
        .collect();
    Json(Value::Array(out))
}

async fn uplinks(_u: AuthUser, State(s): State<ApiState>) -> Json<Value> {
    let now = Utc::now();
    let out: Vec<Value> = s
        .inner
        .uplinks
        .iter()
        .map(|u| {
            let k = u.kpis();
            json!({
                "name": u.name,
                "captured": k.captured,
                "uploaded": k.sent,
                "acknowledged": k.acknowledged,
                "failed": k.failed,
                "rejected": k.rejected,
                "backlog": k.backlog,
                "oldest_age_s": k.backlog_age(now).map(|d| d.as_secs()),
                "completeness": k.completeness(),
                "last_error": k.last_error,
                "last_ack_at": k.last_ack_at,
            })
        })
        .collect();
    Json(Value::Array(out))
}

/// Parses a time parameter (RFC 3339, `yyyy-MM-dd HH:mm:ss` or `yyyy-MM-dd`, GMT+8).
pub fn parse_time(field: &str, s: &str) -> Result<chrono::DateTime<Utc>, ApiError> {
    if let Some(t) = crate::ledger::parse_local_time(s) {
        return Ok(t);
    }
    if let Some(d) = crate::ledger::parse_date(s) {
        return Ok(crate::ledger::local_day_start(d));
    }
    Err(ApiError::bad_request(format!(
        "`{field}`: `{s}` is not a time; write RFC 3339, `yyyy-MM-dd HH:mm:ss` or `yyyy-MM-dd`"
    )))
}

/// `[from, to)` from optional query values; `to` given as a bare date includes that day.
pub fn range(
    from: &Option<String>,
    to: &Option<String>,
    default_days: i64,
) -> Result<(chrono::DateTime<Utc>, chrono::DateTime<Utc>), ApiError> {
    let to_t = match to.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => {
            let t = parse_time("to", s)?;
            if crate::ledger::parse_local_time(s).is_none() {
                t + chrono::Duration::days(1)
            } else {
                t
            }
        }
        None => Utc::now() + chrono::Duration::seconds(1),
    };
    let from_t = match from.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => parse_time("from", s)?,
        None => to_t - chrono::Duration::days(default_days),
    };
    if from_t >= to_t {
        return Err(ApiError::bad_request("`from` must be before `to`"));
    }
    Ok((from_t, to_t))
}

/// Paging parameters: page ≥ 1, 1 ≤ per_page ≤ 500.
pub fn paging(page: Option<u64>, per_page: Option<u64>) -> Result<(u64, u64), ApiError> {
    let page = page.unwrap_or(1);
    let per = per_page.unwrap_or(50);
    if page == 0 {
        return Err(ApiError::bad_request("`page` starts at 1"));
    }
    if per == 0 || per > 500 {
        return Err(ApiError::bad_request("`per_page` must be 1–500"));
    }
    Ok((page, per))
}

/// The records of `items` on one page, with the total.
pub fn page_of(items: Vec<Value>, page: u64, per: u64) -> Value {
    let total = items.len();
    let start = usize::try_from((page - 1) * per).unwrap_or(usize::MAX);
    let items: Vec<Value> = items
        .into_iter()
        .skip(start)
        .take(usize::try_from(per).unwrap_or(500))
        .collect();
    json!({"total": total, "page": page, "per_page": per, "items": items})
}

/// An event as JSON: envelope fields plus the body.
pub fn record_json(e: &EventRecord) -> Value {
    ledger_api::event_json(e)
}

/// The lane's latest pass, for the release module.
pub(crate) fn lane_last_pass(
    r: &LedgerReader,
    lane: &str,
) -> Result<Option<EventRecord>, ApiError> {
    ledger_api::last_pass(r, lane)
}
