//! Search, reports, inspection and transport tonnage over HTTP: thin handlers over
//! `crate::report` (which owns the queries, the figures and the exports).

use super::auth::{AuthUser, Role};
use super::error::ApiError;
use super::{ApiJson, ApiQuery, ApiState};
use crate::report::{self, InspectionParams, PassQuery, ReportError, ReportParams};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// A bad parameter is the caller's (400, or 422 for a well-formed body that is not allowed);
/// anything else is ours.
fn report_error(e: ReportError, status_for_param: StatusCode) -> ApiError {
    match e {
        ReportError::BadParam { .. } if status_for_param == StatusCode::UNPROCESSABLE_ENTITY => {
            ApiError::invalid(e.to_string())
        }
        ReportError::BadParam { .. } => ApiError::bad_request(e.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

fn param(e: ReportError) -> ApiError {
    report_error(e, StatusCode::BAD_REQUEST)
}

fn download(content_type: &'static str, name: String, body: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

fn format_of(v: &Option<String>, allowed: &[&str]) -> Result<String, ApiError> {
    let f = v
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("json");
    if allowed.contains(&f) {
        Ok(f.to_string())
    } else {
        Err(ApiError::bad_request(format!(
            "`format`: `{f}` is not one of {}",
            allowed.join(", ")
        )))
    }
}

pub async fn passes(
    _u: AuthUser,
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<PassQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = s
        .read(move |r| report::search_passes(r, &q).map_err(param))
        .await?;
    Ok(Json(serde_json::to_value(page).unwrap_or(Value::Null)))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct SummaryQuery {
    from: Option<String>,
    to: Option<String>,
    day: Option<String>,
    month: Option<String>,
    format: Option<String>,
}

pub async fn summary(
    _u: AuthUser,
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<SummaryQuery>,
) -> Result<Response, ApiError> {
    let format = format_of(&q.format, &["json", "csv", "xlsx"])?;
    let params = ReportParams {
        from: q.from,
        to: q.to,
        day: q.day,
        month: q.month,
    };
    let r = s
        .read(move |r| report::build_report(r, &params).map_err(param))
        .await?;
    let name = format!("report-{}-{}", r.first_day, r.last_day);
    Ok(match format.as_str() {
        "csv" => download(
            "text/csv; charset=utf-8",
            format!("{name}.csv"),
            report::report_csv(&r).into_bytes(),
        ),
        "xlsx" => download(
            XLSX,
            format!("{name}.xlsx"),
            report::report_xlsx(&r).map_err(param)?,
        ),
        _ => Json(r).into_response(),
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct InspectionQuery {
    from: Option<String>,
    to: Option<String>,
    day: Option<String>,
    month: Option<String>,
    sample: Option<String>,
    seed: Option<String>,
    normal_days: Option<String>,
    warning_days: Option<String>,
    window_from: Option<String>,
    window_to: Option<String>,
    format: Option<String>,
}

pub async fn inspection(
    _u: AuthUser,
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<InspectionQuery>,
) -> Result<Response, ApiError> {
    let format = format_of(&q.format, &["json", "xlsx"])?;
    let params = InspectionParams {
        from: q.from,
        to: q.to,
        day: q.day,
        month: q.month,
        sample: q.sample,
        seed: q.seed,
        normal_days: q.normal_days,
        warning_days: q.warning_days,
        window_from: q.window_from,
        window_to: q.window_to,
    };
    let xlsx = format == "xlsx";
    let out = s
        .read(move |r| {
            let i = report::build_inspection(r, &params).map_err(param)?;
            let book = if xlsx {
                Some(report::inspection_xlsx(&i, &r.photos()).map_err(param)?)
            } else {
                None
            };
            Ok((i, book))
        })
        .await?;
    Ok(match out {
        (i, Some(book)) => download(
            XLSX,
            format!(
                "inspection-{}.xlsx",
                crate::ledger::local_time(i.from).get(..10).unwrap_or("")
            ),
            book,
        ),
        (i, None) => Json(i).into_response(),
    })
}

pub async fn tonnage_list(
    _u: AuthUser,
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<report::TonnageQuery>,
) -> Result<Json<Value>, ApiError> {
    let rows = s
        .read(move |r| report::list_tonnage(r, &q).map_err(param))
        .await?;
    Ok(Json(serde_json::to_value(rows).unwrap_or(Value::Null)))
}

pub async fn tonnage_add(
    u: AuthUser,
    State(s): State<ApiState>,
    ApiJson(input): ApiJson<report::TonnageInput>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    u.require(&[Role::EnvManager, Role::Admin])?;
    let receipt = report::record_tonnage(&s.inner.ledger, &input, &u.user.username)
        .await
        .map_err(|e| report_error(e, StatusCode::UNPROCESSABLE_ENTITY))?;
    tracing::info!(user = %u.user.username, seq = receipt.seq, cargo = %input.cargo, "transport tonnage entered");
    Ok((
        StatusCode::CREATED,
        Json(json!({"seq": receipt.seq, "id": receipt.id})),
    ))
}
