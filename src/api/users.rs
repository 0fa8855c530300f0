//! Login, logout, the current user and account management over HTTP.

use super::auth::{AuthUser, PeerAddr, Role, User, COOKIE};
use super::error::ApiError;
use super::{ApiJson, ApiState};
use crate::ledger::events::{EventBody, UserChange};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::IpAddr;

#[derive(Deserialize)]
pub struct LoginBody {
    username: String,
    password: String,
}

pub async fn login(
    State(s): State<ApiState>,
    PeerAddr(peer): PeerAddr,
    ApiJson(b): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    let ip: Option<IpAddr> = peer.map(|a| a.ip());
    let ip_text = ip.map(|i| i.to_string()).unwrap_or_default();
    if let Some(wait) = s.inner.throttle.locked(&b.username, ip) {
        tracing::warn!(username = %b.username, ip = %ip_text, retry_after_s = wait, "login refused: locked out");
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            format!("too many failed logins; try again in {wait} s"),
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    let (users, name, pw) = (s.clone(), b.username.clone(), b.password);
    let got = tokio::task::spawn_blocking(move || users.inner.users.authenticate(&name, &pw))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    let Some(user) = got else {
        let locked = s.inner.throttle.failed(&b.username, ip);
        tracing::warn!(username = %b.username, ip = %ip_text, "login failed");
        if locked {
            tracing::warn!(username = %b.username, ip = %ip_text, "login locked out after repeated failures");
        }
        return Err(ApiError::unauthenticated("wrong username or password"));
    };
    s.inner.throttle.succeeded(&user.username);
    let (token, expires) = s.inner.sessions.create(user.clone());
    tracing::info!(username = %user.username, ip = %ip_text, "login");
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({"token": token, "expires_at": expires, "user": user})),
    )
        .into_response())
}

pub async fn logout(u: AuthUser, State(s): State<ApiState>) -> Response {
    s.inner.sessions.end(&u.token);
    tracing::info!(username = %u.user.username, "logout");
    let mut h = HeaderMap::new();
    if let Ok(v) = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0").parse() {
        h.insert(header::SET_COOKIE, v);
    }
    (StatusCode::NO_CONTENT, h).into_response()
}

pub async fn me(u: AuthUser) -> Json<User> {
    Json(u.user)
}

pub async fn list(u: AuthUser, State(s): State<ApiState>) -> Result<Json<Vec<User>>, ApiError> {
    u.require(&[Role::Admin])?;
    Ok(Json(s.inner.users.list()?))
}

#[derive(Deserialize)]
pub struct NewUser {
    username: String,
    #[serde(default)]
    display_name: String,
    role: String,
    password: String,
}

/// Records a user change in the ledger; the account change itself is already made.
pub async fn record(s: &ApiState, change: UserChange) -> Result<(), ApiError> {
    s.inner
        .ledger
        .append(EventBody::UserChange(change), Vec::new(), Utc::now())
        .await?;
    Ok(())
}

pub async fn create(
    u: AuthUser,
    State(s): State<ApiState>,
    ApiJson(b): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    u.require(&[Role::Admin])?;
    let role = Role::parse(&b.role).ok_or_else(|| {
        ApiError::invalid(format!(
            "`role`: `{}` is not one of guard, supervisor, env_manager, admin, inspector",
            b.role
        ))
    })?;
    let st = s.clone();
    let created = tokio::task::spawn_blocking(move || {
        st.inner
            .users
            .create(&b.username, &b.display_name, role, &b.password)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    record(
        &s,
        UserChange {
            username: created.username.clone(),
            op: "create".into(),
            role: Some(role.name().into()),
            display_name: Some(created.display_name.clone()),
            actor: u.user.username.clone(),
        },
    )
    .await?;
    tracing::info!(actor = %u.user.username, username = %created.username, role = role.name(), "user created");
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Deserialize)]
pub struct NewPassword {
    password: String,
}

pub async fn password(
    u: AuthUser,
    State(s): State<ApiState>,
    Path(username): Path<String>,
    ApiJson(b): ApiJson<NewPassword>,
) -> Result<Json<Value>, ApiError> {
    if u.user.username != username {
        u.require(&[Role::Admin])?;
    }
    let (st, name) = (s.clone(), username.clone());
    tokio::task::spawn_blocking(move || st.inner.users.set_password(&name, &b.password))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    record(
        &s,
        UserChange {
            username: username.clone(),
            op: "password".into(),
            role: None,
            display_name: None,
            actor: u.user.username.clone(),
        },
    )
    .await?;
    tracing::info!(actor = %u.user.username, username = %username, "password changed");
    Ok(Json(json!({"username": username, "changed": true})))
}
