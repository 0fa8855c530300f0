//! Read side of the ledger over HTTP: passes, photos, visits, in-plant, alarms, registries.

use super::auth::{AuthUser, Role};
use super::error::ApiError;
use super::{page_of, paging, range, ApiJson, ApiQuery, ApiState};
use crate::alarm::AlarmError;
use crate::ledger::events::EventBody;
use crate::ledger::registry::{self, ImportError};
use crate::ledger::store::{decode, raw_row, EventRecord, LedgerReader};
use crate::ledger::views::{Pass, Visit};
use crate::vehicle::RegistryKind;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{Duration, Utc};
use rusqlite::OptionalExtension as _;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

pub fn photo_url(sha: &str) -> String {
    format!("/api/v1/photos/{sha}")
}

fn photos_json(e: &EventRecord, kinds: &[String]) -> Vec<Value> {
    e.photos
        .iter()
        .enumerate()
        .map(|(i, h)| {
            json!({
                "kind": kinds.get(i).cloned().unwrap_or_else(|| "photo".into()),
                "sha256": h,
                "url": photo_url(h),
            })
        })
        .collect()
}

/// Any event: envelope plus body fields.
pub fn event_json(e: &EventRecord) -> Value {
    let body = serde_json::to_value(&e.body).unwrap_or(Value::Null);
    json!({
        "seq": e.seq,
        "id": e.id,
        "kind": e.kind,
        "at": e.occurred_at,
        "recorded_at": e.recorded_at,
        "photos": e.photos,
        "body": body,
    })
}

/// A pass attempt or manual release as a PassRow (docs/api.md); None for other kinds.
pub fn pass_row(e: &EventRecord) -> Option<Value> {
    match &e.body {
        EventBody::PassAttempt(p) => Some(json!({
            "seq": e.seq, "id": e.id, "at": e.occurred_at, "kind": e.kind,
            "lane": p.lane, "gate": p.gate, "direction": p.direction,
            "plate": p.plate, "color": p.color, "decision": p.decision,
            "reason": p.reason, "reason_text": p.reason_text, "barrier": p.barrier,
            "stage": p.stage, "fuel": p.fuel, "opened": p.opened,
            "photos": photos_json(e, &p.photo_kinds),
        })),
        EventBody::ManualRelease(m) => Some(json!({
            "seq": e.seq, "id": e.id, "at": e.occurred_at, "kind": e.kind,
            "lane": m.lane, "gate": m.gate, "direction": m.direction,
            "plate": m.plate, "color": m.color, "decision": "allow",
            "reason": m.reason, "reason_text": m.reason, "barrier": m.mode,
            "stage": null, "fuel": null, "opened": true,
            "operator": m.operator, "approval": m.approval, "request": m.request,
            "photos": photos_json(e, &m.photo_kinds),
        })),
        _ => None,
    }
}

pub fn pass_json(e: &EventRecord) -> Value {
    pass_row(e).unwrap_or_else(|| event_json(e))
}

/// How far back (in events) a lane's last pass is looked for: a lane silent for longer shows
/// none, rather than every lane change scanning the whole log.
const LAST_PASS_LOOKBACK: i64 = 50_000;

/// The latest pass attempt or manual release of a lane.
pub fn last_pass(r: &LedgerReader, lane: &str) -> Result<Option<EventRecord>, ApiError> {
    let mut stmt = r.conn().prepare_cached(
        "SELECT seq, id, recorded_at, occurred_at, kind, body, photos FROM events
         WHERE seq > (SELECT COALESCE(MAX(seq), 0) FROM events) - ?2
           AND kind IN ('pass_attempt', 'manual_release')
           AND json_extract(body, '$.lane') = ?1
         ORDER BY seq DESC LIMIT 1",
    )?;
    let row = stmt
        .query_row(rusqlite::params![lane, LAST_PASS_LOOKBACK], raw_row)
        .optional()?;
    Ok(row.map(decode).transpose()?)
}

/// [`last_pass`] of each of `lanes`.
pub fn last_passes(
    r: &LedgerReader,
    lanes: &[String],
) -> Result<HashMap<String, EventRecord>, ApiError> {
    let mut out = HashMap::new();
    for l in lanes {
        if let Some(e) = last_pass(r, l)? {
            out.insert(l.clone(), e);
        }
    }
    Ok(out)
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::internal(format!("ledger database: {e}"))
    }
}

pub async fn pass_detail(
    _u: AuthUser,
    State(s): State<ApiState>,
    Path(seq): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let seq: i64 = seq
        .parse()
        .map_err(|_| ApiError::bad_request(format!("`seq`: `{seq}` is not a number")))?;
    let got = s
        .read(move |r| {
            let Some(e) = r.event(seq)? else {
                return Ok(None);
            };
            let near = r.events_between(
                &[
                    "correction",
                    "release_request",
                    "release_decision",
                    "manual_release",
                    "weighing",
                ],
                e.occurred_at - Duration::days(1),
                e.occurred_at + Duration::days(1),
            )?;
            let mut requests: Vec<String> = Vec::new();
            let mut related = Vec::new();
            for n in &near {
                let hit = match &n.body {
                    EventBody::Correction(c) => c.refs == e.id,
                    EventBody::ReleaseRequest(q) => q.pass_ref.as_deref() == Some(&e.id),
                    EventBody::Weighing(w) => w.pass_ref.as_deref() == Some(&e.id),
                    _ => false,
                };
                if hit {
                    if n.kind == "release_request" {
                        requests.push(n.id.clone());
                    }
                    related.push(n.clone());
                }
            }
            // The decisions and releases that carried out those requests.
            for n in &near {
                let hit = match &n.body {
                    EventBody::ReleaseDecision(d) => requests.contains(&d.request),
                    EventBody::ManualRelease(m) => m
                        .request
                        .as_ref()
                        .is_some_and(|q| requests.contains(q) && n.seq != e.seq),
                    _ => false,
                };
                if hit {
                    related.push(n.clone());
                }
            }
            related.sort_by_key(|x| x.seq);
            Ok(Some((e, related)))
        })
        .await?;
    let Some((e, related)) = got else {
        return Err(ApiError::not_found(format!("no ledger event {seq}")));
    };
    let kinds = match &e.body {
        EventBody::PassAttempt(p) => p.photo_kinds.clone(),
        EventBody::ManualRelease(m) => m.photo_kinds.clone(),
        EventBody::ReleaseRequest(q) => q.photo_kinds.clone(),
        _ => Vec::new(),
    };
    Ok(Json(json!({
        "event": event_json(&e),
        "photos": photos_json(&e, &kinds),
        "related": related.iter().map(event_json).collect::<Vec<_>>(),
    })))
}

pub async fn photo(
    _u: AuthUser,
    State(s): State<ApiState>,
    Path(sha): Path<String>,
) -> Result<Response, ApiError> {
    if !crate::ledger::photos::is_photo_hash(&sha) {
        return Err(ApiError::bad_request(format!(
            "`sha256`: `{sha}` is not a 64-digit lowercase hex sha256"
        )));
    }
    let store = s.inner.ledger.photos().clone();
    let bytes = tokio::task::spawn_blocking(move || store.get(&sha))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|_| ApiError::not_found("no such photo (never stored, or purged)"))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "private, max-age=86400, immutable"),
        ],
        bytes,
    )
        .into_response())
}

fn pass_view(p: &Pass) -> Value {
    json!({
        "seq": p.seq, "id": p.id, "at": p.at, "lane": p.lane, "gate": p.gate,
        "direction": p.direction, "plate": p.plate, "color": p.color, "barrier": p.barrier,
        "stage": p.stage, "fuel": p.fuel,
        "photos": p.photos.iter().map(|h| json!({"sha256": h, "url": photo_url(h)})).collect::<Vec<_>>(),
        "corrections": p.corrections,
    })
}

fn visit_json(v: &Visit) -> Value {
    json!({
        "plate": v.plate,
        "color": v.color,
        "entry": v.entry.as_ref().map(pass_view),
        "exit": v.exit.as_ref().map(pass_view),
        "cargo": v.cargo(),
        "net_kg": v.net().map(|m| m.kg_f64()),
        "stage": v.stage(),
        "fuel": v.fuel(),
        "flags": v.flags.iter().map(|f| f.name()).collect::<Vec<_>>(),
        "weighings": v.weighings.len(),
    })
}

#[derive(Deserialize)]
pub struct VisitQuery {
    from: Option<String>,
    to: Option<String>,
    plate: Option<String>,
    page: Option<u64>,
    per_page: Option<u64>,
}

pub async fn visits(
    _u: AuthUser,
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<VisitQuery>,
) -> Result<Json<Value>, ApiError> {
    let (page, per) = paging(q.page, q.per_page)?;
    let (from, to) = range(&q.from, &q.to, 1)?;
    let plate = q.plate.clone().filter(|p| !p.is_empty());
    let items = s
        .read(move |r| {
            Ok(r.visits(from, to)?
                .iter()
                .rev()
                .filter(|v| {
                    plate
                        .as_ref()
                        .map_or(true, |p| v.plate.contains(p.as_str()))
                })
                .map(visit_json)
                .collect::<Vec<_>>())
        })
        .await?;
    Ok(Json(page_of(items, page, per)))
}

pub async fn in_plant(_u: AuthUser, State(s): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let items = s
        .read(|r| {
            Ok(r.in_plant_now(Utc::now(), Duration::days(7))?
                .iter()
                .map(visit_json)
                .collect::<Vec<_>>())
        })
        .await?;
    Ok(Json(Value::Array(items)))
}

#[derive(Deserialize)]
pub struct AckBody {
    source: String,
    code: String,
    #[serde(default)]
    note: String,
}

/// The site's alarm board: active alarms (and cleared ones waiting for acknowledgement).
pub async fn alarms(_u: AuthUser, State(s): State<ApiState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.inner.alarms.active())))
}

pub async fn ack_alarm(
    u: AuthUser,
    State(s): State<ApiState>,
    ApiJson(b): ApiJson<AckBody>,
) -> Result<Json<Value>, ApiError> {
    u.require(&[Role::Supervisor, Role::EnvManager, Role::Admin])?;
    match s
        .inner
        .alarms
        .acknowledge(&b.source, &b.code, &u.user.username, &b.note)
        .await
    {
        Ok(a) => Ok(Json(json!(a))),
        Err(e @ AlarmError::NotFound { .. }) => {
            Err(ApiError::invalid(format!("{e} (`source`, `code`)")))
        }
        Err(e @ AlarmError::AlreadyAcknowledged { .. }) => Err(ApiError::conflict(e.to_string())),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

fn registry_kind(s: &str) -> Result<RegistryKind, ApiError> {
    match s {
        "machinery" => Ok(RegistryKind::NonRoad),
        other => registry::parse_kind(other).ok_or_else(|| {
            ApiError::not_found(format!(
                "no registry `{other}`; registries: transport, in_plant, machinery"
            ))
        }),
    }
}

#[derive(Deserialize)]
pub struct RegistryQuery {
    q: Option<String>,
    page: Option<u64>,
    per_page: Option<u64>,
}

pub async fn registry_list(
    _u: AuthUser,
    State(s): State<ApiState>,
    Path(kind): Path<String>,
    ApiQuery(q): ApiQuery<RegistryQuery>,
) -> Result<Json<Value>, ApiError> {
    let kind = registry_kind(&kind)?;
    let (page, per) = paging(q.page, q.per_page)?;
    let needle = q.q.clone().filter(|x| !x.is_empty());
    let items = s
        .read(move |r| {
            Ok(registry::list(r.conn(), kind)?
                .into_iter()
                .filter(|row| {
                    needle
                        .as_ref()
                        .map_or(true, |n| row.iter().any(|(_, v)| v.contains(n.as_str())))
                })
                .map(|row| Value::Object(row.into_iter().map(|(k, v)| (k, json!(v))).collect()))
                .collect::<Vec<_>>())
        })
        .await?;
    Ok(Json(page_of(items, page, per)))
}

fn import_error(e: ImportError) -> ApiError {
    match e {
        ImportError::BadRows(rows) => ApiError::invalid(
            rows.iter()
                .map(|r| format!("`{}`: {}", r.column, r.reason))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        other => ApiError::internal(other.to_string()),
    }
}

pub async fn registry_upsert(
    u: AuthUser,
    State(s): State<ApiState>,
    Path(kind): Path<String>,
    ApiJson(body): ApiJson<serde_json::Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    u.require(&[Role::EnvManager, Role::Admin])?;
    let kind = registry_kind(&kind)?;
    let mut pairs = Vec::new();
    for (k, v) in body {
        // A photo field's value would be a path on the gateway's disk (the CSV import's
        // meaning): over HTTP that reads any file into the photo store. Decided by the field's
        // type, so the Chinese column names are caught too; refused whatever the value.
        if let Some(name) = registry::photo_column(kind, &k) {
            return Err(ApiError::bad_request(format!(
                "`{k}`: photo field ({name}) not accepted over the API; {}",
                registry::PHOTO_REFUSED
            )));
        }
        let text = match v {
            Value::String(t) => t,
            Value::Number(n) => n.to_string(),
            Value::Null => continue,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "`{k}`: give a string or number"
                )))
            }
        };
        pairs.push((k, text));
    }
    let ledger = s.inner.ledger.clone();
    let source = format!("api:{}", u.user.username);
    let done = tokio::task::spawn_blocking(move || {
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        registry::upsert(&ledger, kind, &refs, &source)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(import_error)?;
    let seq = done.seq;
    let mut ev = s
        .read(move |r| Ok(r.event(seq)?))
        .await?
        .map(|e| event_json(&e))
        .unwrap_or(json!({"seq": seq}));
    // Advisory gaps of the record as stored (no 行驶证 / 随车清单): written, but flagged.
    ev["warnings"] = json!(done
        .warnings
        .iter()
        .map(|w| format!("`{}`: {}", w.column, w.reason))
        .collect::<Vec<_>>());
    tracing::info!(user = %u.user.username, registry = kind.name(), seq, warnings = done.warnings.len(), "registry record written");
    Ok((StatusCode::OK, Json(ev)))
}

pub async fn registry_delete(
    u: AuthUser,
    State(s): State<ApiState>,
    Path((kind, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    u.require(&[Role::EnvManager, Role::Admin])?;
    let kind = registry_kind(&kind)?;
    let parts: Vec<String> = key.split_whitespace().map(str::to_string).collect();
    let ledger = s.inner.ledger.clone();
    let source = format!("api:{}", u.user.username);
    let removed =
        tokio::task::spawn_blocking(move || registry::remove_by(&ledger, kind, parts, &source))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| match e {
                crate::ledger::LedgerError::Input(m) => {
                    ApiError::bad_request(format!("`key`: {m}"))
                }
                other => ApiError::from(other),
            })?;
    if removed {
        tracing::info!(user = %u.user.username, registry = kind.name(), key = %key, "registry record removed");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no record `{key}` in {}",
            kind.name()
        )))
    }
}
