//! The manual-release workflow (手工放行: request → approval → actuation, each a ledger event
//! in that order) and plate correction (the guard fixes a misread plate; the lane decides
//! again). The console's list lives in memory and is rebuilt from the ledger at start
//! ([`Releases::recover`]), so a restart neither loses a pending request nor lets an
//! approved one be approved twice; the ledger is the record.

use super::auth::{AuthUser, Role, WRITERS};
use super::error::ApiError;
use super::{lane_last_pass, range, ApiJson, ApiQuery, ApiState};
use crate::lane::engine::{Input, Release as LaneRelease};
use crate::ledger::events::{Correction, EventBody, ReleaseDecision, ReleaseRequest};
use crate::ledger::store::EventRecord;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use ecogate_drivers::{Image, ImageKind, PlateColor, PlateRead};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// A request not decided within this is `expired`.
pub const EXPIRY: Duration = Duration::minutes(10);
/// How far back the console's list is rebuilt from the ledger at start.
pub const RECOVER_WINDOW: Duration = Duration::hours(24);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved,
    Rejected,
    Executed,
    Expired,
}

/// One release request as the console sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Release {
    /// The ledger id of its `release_request` event.
    pub id: String,
    pub lane: String,
    pub plate: String,
    pub color: Option<PlateColor>,
    pub reason_code: String,
    pub reason_text: String,
    pub requested_by: String,
    #[serde(skip)]
    pub requested_role: Role,
    pub requested_at: DateTime<Utc>,
    pub status: Status,
    pub approved_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub note: Option<String>,
    pub request_seq: i64,
    pub approval_seq: Option<i64>,
    pub release_seq: Option<i64>,
    pub photos: Vec<String>,
}

#[derive(Default)]
pub struct Releases {
    list: Mutex<Vec<Release>>,
}

impl Releases {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Release>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks pending requests older than [`EXPIRY`] expired; returns them.
    fn expire(&self, now: DateTime<Utc>) -> Vec<Release> {
        let mut out = Vec::new();
        for r in self.lock().iter_mut() {
            if r.status == Status::Pending && now - r.requested_at > EXPIRY {
                r.status = Status::Expired;
                out.push(r.clone());
            }
        }
        out
    }

    fn get(&self, id: &str) -> Option<Release> {
        self.lock().iter().find(|r| r.id == id).cloned()
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Release)) -> Option<Release> {
        let mut l = self.lock();
        let r = l.iter_mut().find(|r| r.id == id)?;
        f(r);
        Some(r.clone())
    }

    /// Rebuilds the list from the ledger's requests, decisions and releases of the last
    /// [`RECOVER_WINDOW`] (requests older than [`EXPIRY`] that were never decided come back
    /// expired, as they would have become had the gateway kept running).
    pub fn recover(
        reader: &crate::ledger::LedgerReader,
        now: DateTime<Utc>,
    ) -> Result<Releases, crate::ledger::LedgerError> {
        let events = reader.events_between(
            &["release_request", "release_decision", "manual_release"],
            now - RECOVER_WINDOW,
            now + Duration::minutes(1),
        )?;
        let mut list: Vec<Release> = Vec::new();
        for e in events {
            match e.body {
                EventBody::ReleaseRequest(q) => list.push(Release {
                    id: e.id.clone(),
                    lane: q.lane,
                    plate: q.plate,
                    color: q.color,
                    reason_code: q.reason_code,
                    reason_text: q.reason_text,
                    requested_by: q.requested_by,
                    // An unknown role name (renamed since) grants nothing beyond a guard's.
                    requested_role: Role::parse(&q.role).unwrap_or(Role::Guard),
                    requested_at: e.occurred_at,
                    status: Status::Pending,
                    approved_by: None,
                    decided_at: None,
                    note: None,
                    request_seq: e.seq,
                    approval_seq: None,
                    release_seq: None,
                    photos: e.photos,
                }),
                EventBody::ReleaseDecision(d) => {
                    if let Some(r) = list.iter_mut().find(|r| r.id == d.request) {
                        r.status = if d.approved {
                            Status::Approved
                        } else {
                            Status::Rejected
                        };
                        r.approved_by = Some(d.by);
                        r.decided_at = Some(e.occurred_at);
                        r.approval_seq = Some(e.seq);
                        r.note = (!d.note.is_empty()).then_some(d.note);
                    }
                }
                EventBody::ManualRelease(m) => {
                    if let Some(r) = m
                        .request
                        .as_deref()
                        .and_then(|id| list.iter_mut().find(|r| r.id == id))
                    {
                        r.status = Status::Executed;
                        r.release_seq = Some(e.seq);
                    }
                }
                _ => {}
            }
        }
        let out = Releases {
            list: Mutex::new(list),
        };
        out.expire(now);
        Ok(out)
    }

    /// The status of request `id`, if it is in the list.
    pub fn status_of(&self, id: &str) -> Option<Status> {
        self.get(id).map(|r| r.status)
    }

    /// Test hook and recovery: backdates a request (as if it had waited `age`).
    pub fn backdate(&self, id: &str, age: Duration) -> bool {
        self.update(id, |r| r.requested_at -= age).is_some()
    }
}

fn push(s: &ApiState, r: &Release) {
    s.push("release", serde_json::to_value(r).unwrap_or(Value::Null));
}

fn expire(s: &ApiState) {
    for r in s.inner.releases.expire(Utc::now()) {
        tracing::info!(request = %r.id, lane = %r.lane, "release request expired");
        push(s, &r);
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
}

pub async fn list(
    _u: AuthUser,
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Release>>, ApiError> {
    expire(&s);
    let want = match q.status.as_deref().filter(|x| !x.is_empty()) {
        None => None,
        Some(x) => Some(serde_json::from_value::<Status>(json!(x)).map_err(|_| {
            ApiError::bad_request(format!(
                "`status`: `{x}` is not one of pending, approved, rejected, executed, expired"
            ))
        })?),
    };
    let mut out: Vec<Release> = s
        .inner
        .releases
        .lock()
        .iter()
        .filter(|r| want.map_or(true, |w| r.status == w))
        .cloned()
        .collect();
    out.reverse();
    Ok(Json(out))
}

#[derive(Deserialize)]
pub struct NewRelease {
    lane: String,
    #[serde(default)]
    plate: String,
    #[serde(default)]
    color: Option<String>,
    reason_code: String,
    #[serde(default)]
    reason_text: String,
}

fn parse_color(c: Option<&str>) -> Result<Option<PlateColor>, ApiError> {
    match c.map(str::trim).filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(c) => c.parse::<PlateColor>().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "`color`: `{c}` is not a plate colour (blue, yellow, green, white, black, …)"
            ))
        }),
    }
}

fn check_plate(p: &str) -> Result<String, ApiError> {
    let p = p.trim();
    if p.chars().count() > 16 || p.chars().any(char::is_whitespace) {
        return Err(ApiError::bad_request(format!(
            "`plate`: `{p}` is not a plate number"
        )));
    }
    Ok(p.to_string())
}

/// The photos of an event and their kinds, read back from the photo store.
fn photos_of(s: &ApiState, e: &EventRecord) -> (Vec<Bytes>, Vec<String>) {
    let kinds = match &e.body {
        EventBody::PassAttempt(p) => p.photo_kinds.clone(),
        EventBody::ManualRelease(m) => m.photo_kinds.clone(),
        _ => Vec::new(),
    };
    let store = s.inner.ledger.photos();
    let mut bytes = Vec::new();
    let mut out_kinds = Vec::new();
    for (i, h) in e.photos.iter().enumerate() {
        // A purged photo is simply not in the snapshot.
        if let Ok(b) = store.get(h) {
            bytes.push(Bytes::from(b));
            out_kinds.push(kinds.get(i).cloned().unwrap_or_else(|| "scene".into()));
        }
    }
    (bytes, out_kinds)
}

async fn last_pass(s: &ApiState, lane: &str) -> Result<Option<EventRecord>, ApiError> {
    let lane = lane.to_string();
    s.read(move |r| lane_last_pass(r, &lane)).await
}

pub async fn create(
    u: AuthUser,
    State(s): State<ApiState>,
    ApiJson(b): ApiJson<NewRelease>,
) -> Result<(StatusCode, Json<Release>), ApiError> {
    u.require(&[Role::Guard, Role::Supervisor, Role::Admin])?;
    let Some(lane) = s.lane(&b.lane).cloned() else {
        return Err(ApiError::invalid(format!("`lane`: no lane `{}`", b.lane)));
    };
    let plan = &s.inner.plan;
    let Some(reason) = plan
        .console
        .release_reasons
        .iter()
        .find(|r| r.code == b.reason_code)
        .cloned()
    else {
        return Err(ApiError::invalid(format!(
            "`reason_code`: `{}` is not one of {}",
            b.reason_code,
            plan.console
                .release_reasons
                .iter()
                .map(|r| r.code.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    if reason.code == "other" && b.reason_text.trim().is_empty() {
        return Err(ApiError::invalid(
            "`reason_text`: say what the other reason is",
        ));
    }
    let plate = check_plate(&b.plate)?;
    let color = parse_color(b.color.as_deref())?;
    let gate = plan.lane(&b.lane).map(|l| l.spec.gate.clone());

    let last = last_pass(&s, &b.lane).await?;
    let (photos, kinds) = match &last {
        Some(e) => {
            let (s2, e2) = (s.clone(), e.clone());
            tokio::task::spawn_blocking(move || photos_of(&s2, &e2))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
        }
        None => (Vec::new(), Vec::new()),
    };
    let now = Utc::now();
    let receipt = s
        .inner
        .ledger
        .append(
            EventBody::ReleaseRequest(ReleaseRequest {
                lane: b.lane.clone(),
                gate,
                plate: plate.clone(),
                color,
                reason_code: reason.code.clone(),
                reason_text: b.reason_text.trim().to_string(),
                requested_by: u.user.username.clone(),
                role: u.user.role.name().into(),
                pass_ref: last.as_ref().map(|e| e.id.clone()),
                photo_kinds: kinds,
            }),
            photos,
            now,
        )
        .await?;
    let rel = Release {
        id: receipt.id.clone(),
        lane: b.lane.clone(),
        plate,
        color,
        reason_code: reason.code.clone(),
        reason_text: b.reason_text.trim().to_string(),
        requested_by: u.user.username.clone(),
        requested_role: u.user.role,
        requested_at: now,
        status: Status::Pending,
        approved_by: None,
        decided_at: None,
        note: None,
        request_seq: receipt.seq,
        approval_seq: None,
        release_seq: None,
        photos: receipt.photos.clone(),
    };
    s.inner.releases.lock().push(rel.clone());
    tracing::info!(request = %rel.id, lane = %rel.lane, plate = %rel.plate, reason = %rel.reason_code, user = %u.user.username, "release requested");
    push(&s, &rel);

    // A solo reason lets a guard release alone; a supervisor or admin is their own approver.
    let approver = if matches!(u.user.role, Role::Supervisor | Role::Admin) {
        Some(u.user.username.clone())
    } else if reason.solo {
        Some("rule:solo".to_string())
    } else {
        None
    };
    let rel = match approver {
        Some(by) => decide(&s, &rel, true, by, String::new(), &lane).await?,
        None => rel,
    };
    Ok((StatusCode::CREATED, Json(rel)))
}

/// Records the decision, then (approved) sends the lane the release; a watcher marks the
/// request executed once the lane's `manual_release` record names it.
async fn decide(
    s: &ApiState,
    rel: &Release,
    approved: bool,
    by: String,
    note: String,
    lane: &crate::runtime::LaneHandle,
) -> Result<Release, ApiError> {
    let receipt = s
        .inner
        .ledger
        .append(
            EventBody::ReleaseDecision(ReleaseDecision {
                request: rel.id.clone(),
                approved,
                by: by.clone(),
                note: note.clone(),
            }),
            Vec::new(),
            Utc::now(),
        )
        .await?;
    let now = Utc::now();
    let updated = s
        .inner
        .releases
        .update(&rel.id, |r| {
            r.status = if approved {
                Status::Approved
            } else {
                Status::Rejected
            };
            r.approved_by = Some(by.clone());
            r.decided_at = Some(now);
            r.approval_seq = Some(receipt.seq);
            r.note = (!note.is_empty()).then(|| note.clone());
        })
        .unwrap_or_else(|| rel.clone());
    tracing::info!(request = %rel.id, approved, by = %by, "release decided");
    push(s, &updated);
    if !approved {
        return Ok(updated);
    }
    let label = s
        .inner
        .plan
        .console
        .release_reasons
        .iter()
        .find(|r| r.code == rel.reason_code)
        .map(|r| r.label.clone())
        .unwrap_or_else(|| rel.reason_code.clone());
    let reason = if rel.reason_text.is_empty() {
        label
    } else {
        format!("{label}: {}", rel.reason_text)
    };
    let input = Input::ManualRelease(LaneRelease {
        operator: rel.requested_by.clone(),
        role: rel.requested_role.name().into(),
        reason,
        remote: false,
        plate: (!rel.plate.is_empty()).then(|| rel.plate.clone()),
        approval: Some(by),
        request: Some(rel.id.clone()),
    });
    if lane.inputs.try_send(input).is_err() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "lane_busy",
            format!(
                "lane `{}` is not taking inputs; the approval is recorded, the barrier did not open",
                rel.lane
            ),
        ));
    }
    tokio::spawn(watch_execution(s.clone(), rel.id.clone(), receipt.seq));
    Ok(updated)
}

/// Waits (bounded) for the lane's `manual_release` that carries out `id`.
async fn watch_execution(s: ApiState, id: String, after: i64) {
    for _ in 0..150 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let want = id.clone();
        let found = s
            .read(move |r| {
                Ok(r.events_after(after, 10_000)?.into_iter().find(|e| {
                    matches!(&e.body, EventBody::ManualRelease(m) if m.request.as_deref() == Some(&want))
                }))
            })
            .await;
        if let Ok(Some(e)) = found {
            if let Some(r) = s.inner.releases.update(&id, |r| {
                r.status = Status::Executed;
                r.release_seq = Some(e.seq);
            }) {
                tracing::info!(request = %id, seq = e.seq, "release executed");
                push(&s, &r);
            }
            return;
        }
    }
    tracing::warn!(request = %id, "approved release not recorded by the lane within 15 s");
}

#[derive(Deserialize, Default)]
pub struct DecisionBody {
    #[serde(default)]
    note: String,
}

/// An optional JSON body: empty is the default.
fn optional_body<T: for<'de> Deserialize<'de> + Default>(b: &Bytes) -> Result<T, ApiError> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| ApiError::bad_request(format!("JSON body: {e}")))
}

async fn decide_route(
    u: AuthUser,
    s: ApiState,
    id: String,
    body: Bytes,
    approved: bool,
) -> Result<Json<Release>, ApiError> {
    u.require(&[Role::Supervisor, Role::Admin])?;
    let b: DecisionBody = optional_body(&body)?;
    expire(&s);
    let Some(rel) = s.inner.releases.get(&id) else {
        return Err(ApiError::not_found(format!("no release request `{id}`")));
    };
    if rel.requested_by == u.user.username {
        return Err(ApiError::forbidden(
            "a requester cannot decide their own release request; another supervisor must",
        ));
    }
    if rel.status != Status::Pending {
        return Err(ApiError::conflict(format!(
            "release request `{id}` is {}, not pending",
            serde_json::to_value(rel.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        )));
    }
    let Some(lane) = s.lane(&rel.lane).cloned() else {
        return Err(ApiError::invalid(format!("`lane`: no lane `{}`", rel.lane)));
    };
    // Claim it first so two approvers racing cannot both open the barrier.
    let claimed = s
        .inner
        .releases
        .update(&id, |r| {
            if r.status == Status::Pending {
                r.status = if approved {
                    Status::Approved
                } else {
                    Status::Rejected
                };
            }
        })
        .is_some_and(|r| r.status != Status::Pending);
    if !claimed {
        return Err(ApiError::conflict(format!(
            "release request `{id}` is not pending"
        )));
    }
    Ok(Json(
        decide(&s, &rel, approved, u.user.username.clone(), b.note, &lane).await?,
    ))
}

pub async fn approve(
    u: AuthUser,
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Release>, ApiError> {
    decide_route(u, s, id, body, true).await
}

pub async fn reject(
    u: AuthUser,
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Release>, ApiError> {
    decide_route(u, s, id, body, false).await
}

#[derive(Deserialize)]
pub struct CorrectBody {
    plate: String,
    color: String,
    #[serde(default)]
    note: String,
}

pub async fn correct_plate(
    u: AuthUser,
    State(s): State<ApiState>,
    Path(lane_id): Path<String>,
    ApiJson(b): ApiJson<CorrectBody>,
) -> Result<Json<Value>, ApiError> {
    u.require(WRITERS)?;
    let Some(lane) = s.lane(&lane_id).cloned() else {
        return Err(ApiError::invalid(format!("`lane`: no lane `{lane_id}`")));
    };
    let plate = check_plate(&b.plate)?;
    if plate.is_empty() {
        return Err(ApiError::bad_request("`plate`: give the corrected plate"));
    }
    let Some(color) = parse_color(Some(&b.color))? else {
        return Err(ApiError::bad_request("`color`: give the plate colour"));
    };
    let Some(last) = last_pass(&s, &lane_id).await? else {
        return Err(ApiError::invalid(format!(
            "lane `{lane_id}` has no pass to correct"
        )));
    };
    let old = match &last.body {
        EventBody::PassAttempt(p) => p.plate.clone(),
        EventBody::ManualRelease(m) => m.plate.clone().unwrap_or_default(),
        _ => String::new(),
    };
    let reason = if b.note.trim().is_empty() {
        format!("plate_correction: {old} → {plate}")
    } else {
        format!("plate_correction: {old} → {plate}: {}", b.note.trim())
    };
    let receipt = s
        .inner
        .ledger
        .append(
            EventBody::Correction(Correction {
                refs: last.id.clone(),
                operator: u.user.username.clone(),
                reason,
                void: false,
                plate: Some(plate.clone()),
                color: Some(color),
                direction: None,
                cargo: None,
                net: None,
            }),
            Vec::new(),
            Utc::now(),
        )
        .await?;
    let (s2, e2) = (s.clone(), last.clone());
    let (bytes, kinds) = tokio::task::spawn_blocking(move || photos_of(&s2, &e2))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let images = bytes
        .into_iter()
        .zip(kinds)
        .map(|(jpeg, k)| Image {
            kind: if k == "plate" {
                ImageKind::Plate
            } else {
                ImageKind::Scene
            },
            jpeg,
        })
        .collect();
    // The read id marks it operator-corrected (it becomes the pass's `read_id`).
    let read = PlateRead {
        plate: plate.clone(),
        color,
        confidence: 100,
        source_id: Some(format!("correction:{}", receipt.id)),
        captured_at: Some(Utc::now()),
        offline_replay: false,
        images,
    };
    if lane.inputs.try_send(Input::Plate(read)).is_err() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "lane_busy",
            format!("lane `{lane_id}` is not taking inputs; the correction is recorded"),
        ));
    }
    tracing::info!(lane = %lane_id, user = %u.user.username, old = %old, new = %plate, refs = %last.id, "plate corrected");
    Ok(Json(json!({
        "correction_seq": receipt.seq,
        "correction_id": receipt.id,
        "refs": last.id,
        "refs_seq": last.seq,
        "old_plate": old,
        "plate": plate,
        "color": color,
    })))
}

#[derive(Deserialize)]
pub struct ReportQuery {
    from: Option<String>,
    to: Option<String>,
}

#[derive(Default, Serialize)]
struct GuardStats {
    requested: u64,
    approved: u64,
    rejected: u64,
    executed: u64,
    solo: u64,
}

/// Per-guard counts and the daily exception list (every request, with its outcome), from
/// the ledger.
pub async fn report(
    _u: AuthUser,
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<ReportQuery>,
) -> Result<Json<Value>, ApiError> {
    let (from, to) = range(&q.from, &q.to, 1)?;
    let events = s
        .read(move |r| {
            Ok(r.events_between(
                &["release_request", "release_decision", "manual_release"],
                from,
                to + Duration::minutes(30),
            )?)
        })
        .await?;
    let mut requests: BTreeMap<String, (EventRecord, ReleaseRequest)> = BTreeMap::new();
    let mut decisions: BTreeMap<String, ReleaseDecision> = BTreeMap::new();
    let mut executed: BTreeMap<String, i64> = BTreeMap::new();
    let mut unrequested = Vec::new();
    for e in events {
        match &e.body {
            EventBody::ReleaseRequest(q) if e.occurred_at < to => {
                requests.insert(e.id.clone(), (e.clone(), q.clone()));
            }
            EventBody::ReleaseDecision(d) => {
                decisions.insert(d.request.clone(), d.clone());
            }
            EventBody::ManualRelease(m) => match &m.request {
                Some(q) => {
                    executed.insert(q.clone(), e.seq);
                }
                None if e.occurred_at < to => unrequested.push(super::record_json(&e)),
                None => {}
            },
            _ => {}
        }
    }
    let mut guards: BTreeMap<String, GuardStats> = BTreeMap::new();
    let mut days: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (id, (e, q)) in &requests {
        let g = guards.entry(q.requested_by.clone()).or_default();
        g.requested += 1;
        let d = decisions.get(id);
        let status = match (d, executed.get(id)) {
            (_, Some(_)) => "executed",
            (Some(d), None) if d.approved => "approved",
            (Some(_), None) => "rejected",
            (None, None) if Utc::now() - e.occurred_at > EXPIRY => "expired",
            (None, None) => "pending",
        };
        if let Some(d) = d {
            if d.approved {
                g.approved += 1;
                if d.by == "rule:solo" {
                    g.solo += 1;
                }
            } else {
                g.rejected += 1;
            }
        }
        if executed.contains_key(id) {
            g.executed += 1;
        }
        let day = crate::ledger::local_time(e.occurred_at)
            .get(..10)
            .unwrap_or_default()
            .to_string();
        days.entry(day).or_default().push(json!({
            "id": id, "seq": e.seq, "at": e.occurred_at, "lane": q.lane, "plate": q.plate,
            "color": q.color, "reason_code": q.reason_code, "reason_text": q.reason_text,
            "requested_by": q.requested_by, "status": status,
            "approved_by": d.map(|d| d.by.clone()), "release_seq": executed.get(id),
        }));
    }
    Ok(Json(json!({
        "from": from,
        "to": to,
        "guards": guards,
        "days": days.into_iter().map(|(day, items)| json!({"date": day, "requests": items})).collect::<Vec<_>>(),
        "releases_without_request": unrequested,
    })))
}
