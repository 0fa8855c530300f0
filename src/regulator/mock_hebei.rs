//! The strict mock of a 河北 一体化 platform (reference §4.4), served by [`super::mock`] when the
//! profile says `protocol = "hebei"`. The token form must carry the right `Client_id`,
//! `Client_secret` and encoded password; an entry gets a `throughId`; an exit must echo a
//! `throughId` the platform issued for the same plate, or come without one (accepted and
//! counted as unpaired). Codes are checked against the profile's tables and §2.1/§2.2.

use super::hebei::encode_password;
use super::mock::Inner;
use super::mock_kaifeng::{
    check_auth, check_image, check_time, in_table, issue_token, text, text_or_empty, Refusal,
};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

#[derive(Default)]
pub(crate) struct HebeiState {
    /// throughId → plate.
    through: HashMap<String, String>,
    /// (plate, carInTime) → throughId: an entry sent again gets the same id.
    entries: HashMap<(String, String), String>,
    exits: HashSet<(String, String)>,
    next: u64,
}

fn reply(code: &str, message: &str, data: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        json!({"code": code, "message": message, "data": data}).to_string(),
    )
        .into_response()
}

/// Decodes `application/x-www-form-urlencoded`.
pub fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "form body is not UTF-8".to_string())?;
    let mut out = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode(k)?, decode(v)?);
    }
    Ok(out)
}

fn decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad %-escape in `{s}`"))?;
                out.push(h);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` does not decode to UTF-8"))
}

pub(super) fn handle(g: &mut Inner, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    match process(g, path, headers, body) {
        Ok(data) => reply("10000", "success", data),
        Err(("401", m)) => {
            g.stats.token_refusals += 1;
            reply("401", &m, Value::Null)
        }
        Err((code, m)) => {
            g.stats.rejections.push(m.clone());
            reply(code, &m, Value::Null)
        }
    }
}

const STAGES: &[&str] = &["0", "1", "2", "3", "4", "5", "6", "7", "D", "X"];
const FUELS: &str = "ABCDEFLMNOPQYZ";

fn process(g: &mut Inner, path: &str, headers: &HeaderMap, body: &[u8]) -> Result<Value, Refusal> {
    let p = g.profile.clone();
    let Some(h) = p.hebei.as_ref() else {
        return Err(("500", "mock: profile has no [hebei]".into()));
    };
    if path == h.token {
        let form = parse_form(body).map_err(|e| ("400", format!("token: {e}")))?;
        let hdr = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        if hdr(&h.client_id_header) != h.client_id {
            return Err(("400", format!("token: wrong `{}`", h.client_id_header)));
        }
        if let Some(s) = &g.secret {
            if hdr(&h.client_secret_header) != s {
                return Err(("400", format!("token: wrong `{}`", h.client_secret_header)));
            }
        }
        let user = form
            .get(&p.auth.username)
            .filter(|u| !u.is_empty())
            .ok_or(("400", format!("token: missing `{}`", p.auth.username)))?;
        let pass = form
            .get(&p.auth.password)
            .ok_or(("400", format!("token: missing `{}`", p.auth.password)))?;
        if let Some((u, pw)) = &g.credentials {
            if u != user || *pass != encode_password(h.password_encoding, pw) {
                return Err(("400", "token: wrong username or password".into()));
            }
        }
        let token = issue_token(g);
        return Ok(json!({"access_token": token, "token_type": "bearer"}));
    }
    if path != h.upload {
        return Err(("404", format!("no operation at {path}")));
    }
    if let Err(m) = check_auth(g, headers) {
        return Err(("401", m));
    }
    let v: Map<String, Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(("400", "request body is not a JSON object".into())),
        Err(e) => return Err(("400", format!("request body is not JSON: {e}"))),
    };
    let what = "upload-control-vehicles";
    let plate = text(&v, "carPlate", what)?.to_string();
    in_table(
        text(&v, "carPalteColor", what)?,
        &p.codes.plate_color,
        "carPalteColor",
        what,
    )?;
    let stage = text(&v, "dischargeStage", what)?;
    if !STAGES.contains(&stage) {
        return Err((
            "400",
            format!("{what}: dischargeStage `{stage}` is not 0-7, D or X"),
        ));
    }
    let fuel = text(&v, "carFuel", what)?;
    if !(fuel.len() == 1 && FUELS.contains(fuel)) {
        return Err((
            "400",
            format!("{what}: carFuel `{fuel}` is not a GA 24.9 letter"),
        ));
    }
    let net = text(&v, "networkingStatus", what)?;
    if net != "0" && net != "1" {
        return Err((
            "400",
            format!("{what}: networkingStatus `{net}` is not 0 or 1"),
        ));
    }
    match (v.contains_key("carInTime"), v.contains_key("carOutTime")) {
        (true, false) => {
            text(&v, "entranceNumber", what)?;
            text(&v, "entranceGateNumber", what)?;
            let t = text(&v, "carInTime", what)?.to_string();
            check_time(&p, &t, what)?;
            for k in ["entryHeadPic", "entryBodyPic"] {
                let img = text_or_empty(&v, k, what)?;
                if !img.is_empty() {
                    check_image(&p, img, what)?;
                }
            }
            if v.contains_key("throughId") {
                return Err(("400", format!("{what}: an entry carries no throughId")));
            }
            let key = (plate.clone(), t);
            if let Some(id) = g.hebei.entries.get(&key) {
                g.stats.duplicate_records += 1;
                return Ok(json!({"throughId": id}));
            }
            g.hebei.next += 1;
            let id = format!("TH{:010}", g.hebei.next);
            g.hebei.entries.insert(key, id.clone());
            g.hebei.through.insert(id.clone(), plate);
            g.arrivals.insert(id.clone(), Instant::now());
            g.stats.records.push(Value::Object(v));
            Ok(json!({"throughId": id}))
        }
        (false, true) => {
            text(&v, "exportNumber", what)?;
            text(&v, "exportGateNumber", what)?;
            let t = text(&v, "carOutTime", what)?.to_string();
            check_time(&p, &t, what)?;
            for k in ["factoryHeadPic", "factoryBodyPic"] {
                let img = text_or_empty(&v, k, what)?;
                if !img.is_empty() {
                    check_image(&p, img, what)?;
                }
            }
            let paired = match v.get("throughId") {
                None => false,
                Some(_) => {
                    let id = text(&v, "throughId", what)?;
                    match g.hebei.through.get(id) {
                        None => {
                            return Err((
                                "400",
                                format!("{what}: throughId `{id}` was never issued"),
                            ))
                        }
                        Some(pl) if *pl != plate => {
                            return Err((
                                "400",
                                format!(
                                    "{what}: throughId `{id}` belongs to `{pl}`, not `{plate}`"
                                ),
                            ))
                        }
                        Some(_) => true,
                    }
                }
            };
            if !g.hebei.exits.insert((plate, t)) {
                g.stats.duplicate_records += 1;
                return Ok(Value::Null);
            }
            if !paired {
                g.stats.unpaired_exits += 1;
            }
            g.stats.records.push(Value::Object(v));
            Ok(Value::Null)
        }
        _ => Err((
            "400",
            format!("{what}: exactly one of carInTime (entry) and carOutTime (exit) is required"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_round_trips_the_client_encoding() {
        let enc = super::super::client::urlencode("a b&c=d/中");
        let body = format!("username={enc}&password=x%2By");
        let f = parse_form(body.as_bytes()).unwrap();
        assert_eq!(f["username"], "a b&c=d/中");
        assert_eq!(f["password"], "x+y");
        assert!(parse_form(b"a=%zz").is_err());
    }
}
