//! `POST /api/v1/corrections`: correct an earlier record (更正) from the console. The checks are
//! the ledger's own (`ledger::correct`), shared with `ecogate ledger correct`.

use super::auth::{AuthUser, Role};
use super::error::{ApiError, ApiJson};
use super::ApiState;
use crate::ledger::correct::{self, CorrectError};
use crate::ledger::events::Correction;
use crate::vehicle::{Direction, PlateColor};
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// Guards correct the plate of their lane's last pass (`correct-plate`); any other record, and
/// voiding one, is for the supervisor, the environment manager and the admin.
const CORRECTORS: &[Role] = &[Role::Supervisor, Role::EnvManager, Role::Admin];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrectionBody {
    refs: String,
    reason: String,
    #[serde(default)]
    void: bool,
    plate: Option<String>,
    color: Option<String>,
    direction: Option<String>,
    cargo: Option<String>,
    /// Decimal kg, as a string or a number.
    net_kg: Option<Value>,
}

pub async fn create(
    u: AuthUser,
    State(s): State<ApiState>,
    ApiJson(b): ApiJson<CorrectionBody>,
) -> Result<Json<Value>, ApiError> {
    u.require(CORRECTORS)?;
    let color =
        match b.color.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(c) => Some(c.parse::<PlateColor>().map_err(|_| {
                ApiError::bad_request(format!("`color`: `{c}` is not a plate colour"))
            })?),
        };
    let direction = match b.direction.as_deref() {
        None => None,
        Some(d) => Some(Direction::parse(d).ok_or_else(|| {
            ApiError::bad_request(format!("`direction`: `{d}` is neither in nor out"))
        })?),
    };
    let net = match &b.net_kg {
        None | Some(Value::Null) => None,
        Some(v) => {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(ApiError::bad_request("`net_kg`: give a weight in kg")),
            };
            Some(
                text.parse::<ecogate_drivers::Mass>()
                    .map_err(|e| ApiError::bad_request(format!("`net_kg`: {e}")))?,
            )
        }
    };
    let c = Correction {
        refs: b.refs.trim().to_string(),
        operator: u.user.username.clone(),
        reason: b.reason.trim().to_string(),
        void: b.void,
        plate: b.plate.map(|p| p.trim().to_string()),
        color,
        direction,
        cargo: b.cargo.map(|c| c.trim().to_string()),
        net,
    };
    let receipt = correct::record(&s.inner.ledger, c)
        .await
        .map_err(|e| match e {
            CorrectError::NoSuchEvent(_) => ApiError::not_found(e.to_string()),
            CorrectError::AlreadyVoid(_) => ApiError::conflict(e.to_string()),
            CorrectError::Ledger(l) => ApiError::from(l),
            _ => ApiError::invalid(e.to_string()),
        })?;
    Ok(Json(json!({"seq": receipt.seq, "id": receipt.id})))
}
