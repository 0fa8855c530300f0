//! The strict mock of a 开封 中科九州 platform (reference §4.2), served by [`super::mock`]
//! when the profile says `protocol = "kaifeng"`. It issues serials at `/transport/check`
//! (answering allow/deny from the vehicle table of `MockPlatform::set_vehicle`, each check
//! recorded in `MockPlatform::checks`) and
//! refuses a pass upload under a serial it did not issue (or issued for another vehicle or
//! direction), cargo for a serial whose pass it has not accepted, codes outside the profile's
//! tables, and requests without a valid token / signature.

use super::auth::verify_signed;
use super::mock::Inner;
use super::profile::{AuthKind, PhotoEncoding, PlatformProfile};
use super::transport_control::is_base64;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

#[derive(Default)]
pub(crate) struct KaifengState {
    /// serial → (license, passStatus, gateCode) it was issued for.
    issued: HashMap<String, (String, String, String)>,
    /// Serials whose pass was accepted.
    passes: HashSet<String>,
    cargo_keys: HashSet<(String, String)>,
    next: u64,
    pub(crate) duplicate_replies: bool,
    pub(crate) lose_pass_answers: u32,
}

pub(super) type Refusal = (&'static str, String);

/// The message kaifeng answers for a missing or stale token (the profile's first
/// `auth_messages`, so the client's check is tested against the same text).
fn token_message(p: &PlatformProfile) -> String {
    p.kaifeng
        .as_ref()
        .and_then(|k| k.auth_messages.first().cloned())
        .unwrap_or_else(|| "Token验证不通过".into())
}

fn reply(success: bool, code: &str, message: &str, data: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        json!({"success": success, "code": code, "message": message, "data": data}).to_string(),
    )
        .into_response()
}

pub(super) fn text<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<&'a str, Refusal> {
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

/// A field that must be present as a string but may be empty.
pub(super) fn text_or_empty<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<&'a str, Refusal> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        None => Err(("400", format!("{what}: missing field `{key}`"))),
        Some(v) => Err((
            "400",
            format!("{what}: field `{key}` must be a string, not {v}"),
        )),
    }
}

pub(super) fn in_table(
    v: &str,
    table: &std::collections::BTreeMap<String, String>,
    key: &str,
    what: &str,
) -> Result<(), Refusal> {
    if table.values().any(|c| c == v) {
        return Ok(());
    }
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

pub(super) fn check_time(p: &PlatformProfile, t: &str, what: &str) -> Result<(), Refusal> {
    chrono::NaiveDateTime::parse_from_str(t, &p.time.format)
        .map(|_| ())
        .map_err(|e| {
            (
                "400",
                format!("{what}: time `{t}` is not `{}` ({e})", p.time.format),
            )
        })
}

/// A photo as the profile's encoding sends it.
pub(super) fn check_image(p: &PlatformProfile, img: &str, what: &str) -> Result<(), Refusal> {
    let ok = match p.photo.encoding {
        PhotoEncoding::Base64 => is_base64(img),
        PhotoEncoding::DataUri => img
            .strip_prefix("data:image/jpeg;base64,")
            .is_some_and(is_base64),
        PhotoEncoding::Url => {
            (img.starts_with("http://") || img.starts_with("https://"))
                && img
                    .rsplit('/')
                    .next()
                    .and_then(|f| f.strip_suffix(".jpg"))
                    .is_some_and(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()))
        }
    };
    if ok {
        Ok(())
    } else {
        Err((
            "400",
            format!("{what}: image is not {:?}", p.photo.encoding),
        ))
    }
}

/// Checks the auth of a non-login request by the profile's kind. `Err` is the message of an
/// authentication refusal.
pub(super) fn check_auth(g: &Inner, headers: &HeaderMap) -> Result<(), String> {
    let p = &g.profile;
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    match p.auth.kind {
        AuthKind::Login | AuthKind::StaticToken => {
            let h = p.auth.token_header.as_deref().unwrap_or("token");
            let v = get(h).ok_or_else(|| format!("missing header `{h}`"))?;
            let t = v
                .strip_prefix(p.auth.token_prefix.as_str())
                .ok_or_else(|| {
                    format!("header `{h}` does not start with `{}`", p.auth.token_prefix)
                })?;
            if p.auth.kind == AuthKind::StaticToken {
                return match &g.secret {
                    Some(s) if s == t => Ok(()),
                    Some(_) => Err("static token does not match".into()),
                    None if !t.is_empty() => Ok(()),
                    None => Err("empty token".into()),
                };
            }
            match g.tokens.get(t) {
                Some(until) if Instant::now() < *until => Ok(()),
                Some(_) => Err("token expired".into()),
                None => Err("token unknown or expired".into()),
            }
        }
        AuthKind::Signed => {
            let user = g.credentials.as_ref().map(|(u, _)| u.clone());
            let userkey = match (&user, get(&p.auth.userkey_header)) {
                (Some(u), _) => u.clone(),
                (None, Some(k)) => k,
                (None, None) => return Err(format!("missing header `{}`", p.auth.userkey_header)),
            };
            let secret = g.secret.clone().unwrap_or_default();
            verify_signed(
                &p.auth,
                get,
                &userkey,
                &secret,
                chrono::Utc::now().timestamp_millis(),
                300_000,
            )
        }
    }
}

pub(super) fn issue_token(g: &mut Inner) -> String {
    g.next_token += 1;
    let token = format!("mock-token-{}", g.next_token);
    let until = Instant::now() + g.token_ttl;
    g.tokens.insert(token.clone(), until);
    g.stats.logins += 1;
    token
}

pub(super) fn handle(g: &mut Inner, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    match process(g, path, headers, body) {
        Ok((message, data)) => reply(true, "200", &message, data),
        Err(("503", m)) => {
            g.stats.faults_served += 1;
            (StatusCode::SERVICE_UNAVAILABLE, m).into_response()
        }
        Err(("401", m)) => {
            g.stats.token_refusals += 1;
            reply(false, "401", &m, Value::Null)
        }
        Err((code, m)) => {
            g.stats.rejections.push(m.clone());
            reply(false, code, &m, Value::Null)
        }
    }
}

fn process(
    g: &mut Inner,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, Value), Refusal> {
    let p = g.profile.clone();
    let Some(k) = p.kaifeng.as_ref() else {
        return Err(("500", "mock: profile has no [kaifeng]".into()));
    };
    let v: Map<String, Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(("400", "request body is not a JSON object".into())),
        Err(e) => return Err(("400", format!("request body is not JSON: {e}"))),
    };
    let company = text(&v, "companyCode", path)?.to_string();
    if let Some(want) = &g.organ {
        if *want != company {
            return Err(("400", format!("{path}: unknown companyCode `{company}`")));
        }
    }
    if path == k.login {
        let user = text(&v, &p.auth.username, "login")?;
        let pass = text_or_empty(&v, &p.auth.password, "login")?;
        if let Some((u, pw)) = &g.credentials {
            if u != user || pw != pass {
                return Err((
                    "400",
                    "账号或密码错误 (wrong companynum or password)".into(),
                ));
            }
        }
        let token = issue_token(g);
        let now = chrono::Utc::now()
            .with_timezone(&crate::ledger::site_zone())
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        return Ok((
            "登录成功".into(),
            json!({"token": token, "serverTime": now}),
        ));
    }
    if let Err(m) = check_auth(g, headers) {
        return Err(("401", format!("{}: {m}", token_message(&p))));
    }
    let license = text(&v, "license", path)?.to_string();
    let color = text(&v, "licenseColor", path)?;
    in_table(color, &p.codes.plate_color, "licenseColor", path)?;
    let gate = text(&v, "gateCode", path)?.to_string();
    if path == k.check {
        let status = text(&v, "passStatus", path)?.to_string();
        in_table(&status, &p.codes.direction, "passStatus", path)?;
        g.kaifeng.next += 1;
        let serial = format!("KF{:012}", g.kaifeng.next);
        g.down.checks.push(super::mock::MockCheck {
            plate: license.clone(),
            color: color.to_string(),
            gate: gate.clone(),
        });
        // The vehicle table the tests set (`MockPlatform::set_vehicle`); an unknown plate is
        // allowed with no stage or fuel. A controlled vehicle still gets a serial, as the
        // reference's clients show (the platform numbers every check).
        let v = g
            .down
            .vehicles
            .get(&license)
            .cloned()
            .unwrap_or(super::mock::MockVehicle::allowed("", ""));
        g.kaifeng
            .issued
            .insert(serial.clone(), (license, status, gate));
        g.stats.issued_serials.push(serial.clone());
        return Ok((
            "ok".into(),
            json!({"isAllowPass": if v.control { "0" } else { "1" }, "passReason": v.reason,
                   "serialNum": serial, "fuelType": v.fuel, "emissionStandard": v.stage}),
        ));
    }
    let serial = text(&v, "serialNum", path)?.to_string();
    let Some((lic, status, issued_gate)) = g.kaifeng.issued.get(&serial).cloned() else {
        return Err((
            "400",
            format!("{path}: 流水号 `{serial}` was not issued by this platform"),
        ));
    };
    if lic != license {
        return Err((
            "400",
            format!("{path}: serial `{serial}` was issued for `{lic}`, not `{license}`"),
        ));
    }
    if path == k.pass {
        let ps = text(&v, "passStatus", path)?;
        in_table(ps, &p.codes.direction, "passStatus", path)?;
        if ps != status || gate != issued_gate {
            return Err((
                "400",
                format!("{path}: serial `{serial}` was issued for passStatus {status} at gate {issued_gate}"),
            ));
        }
        let signal = text(&v, "gateSignal", path)?;
        if signal != k.gate_signal {
            return Err((
                "400",
                format!("{path}: gateSignal must be `{}`", k.gate_signal),
            ));
        }
        check_time(&p, text(&v, "passTime", path)?, path)?;
        check_time(&p, text(&v, "imageRecordTime", path)?, path)?;
        let dir = p
            .codes
            .direction
            .iter()
            .find(|(_, c)| *c == ps)
            .map(|(d, _)| d.clone())
            .unwrap_or_default();
        let it = text(&v, "imageType", path)?;
        if k.image_type.get(&dir).map(String::as_str) != Some(it) {
            return Err((
                "400",
                format!("{path}: imageType `{it}` does not match passStatus `{ps}`"),
            ));
        }
        let no = text(&v, "imageNo", path)?;
        let url = text_or_empty(&v, "imageUrl", path)?;
        match (no, url.is_empty()) {
            ("0", true) => {}
            ("0", false) | (_, true) => {
                return Err((
                    "400",
                    format!("{path}: imageNo `{no}` and imageUrl disagree"),
                ))
            }
            _ => {
                if no.parse::<u32>().map_or(true, |n| n == 0) {
                    return Err(("400", format!("{path}: imageNo `{no}` is not 1, 2, …")));
                }
                check_image(&p, url, path)?;
            }
        }
        let lose = g.kaifeng.lose_pass_answers > 0;
        if lose {
            g.kaifeng.lose_pass_answers -= 1;
        }
        let lost = || -> Result<(String, Value), Refusal> {
            Err(("503", "injected fault: answer lost".into()))
        };
        if g.kaifeng.passes.contains(&serial) {
            g.stats.duplicate_records += 1;
            g.stats.duplicate_serials.push(serial.clone());
            if g.kaifeng.duplicate_replies {
                let m = k
                    .duplicate_messages
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "流水号重复".into());
                return Err(("500", m));
            }
            if lose {
                return lost();
            }
            return Ok(("ok".into(), Value::Null));
        }
        g.kaifeng.passes.insert(serial.clone());
        g.arrivals.insert(serial, Instant::now());
        g.stats.records.push(Value::Object(v));
        if lose {
            return lost();
        }
        return Ok(("ok".into(), Value::Null));
    }
    if path == k.cargo {
        if !g.kaifeng.passes.contains(&serial) {
            return Err((
                "400",
                format!("{path}: no pass record accepted under `{serial}`"),
            ));
        }
        text(&v, "cargoName", path)?;
        let w = text(&v, "cargoWeight", path)?;
        if w.parse::<f64>()
            .map_or(true, |x| x <= 0.0 || !x.is_finite())
        {
            return Err((
                "400",
                format!("{path}: cargoWeight `{w}` is not a positive number"),
            ));
        }
        let t = text(&v, "cargoRecordTime", path)?.to_string();
        check_time(&p, &t, path)?;
        let unit = text(&v, "cargoWeightUnit", path)?;
        if unit != k.cargo_unit {
            return Err((
                "400",
                format!("{path}: cargoWeightUnit must be `{}`", k.cargo_unit),
            ));
        }
        if g.kaifeng.cargo_keys.insert((serial, t)) {
            g.stats.cargo.push(Value::Object(v));
        } else {
            g.stats.duplicate_records += 1;
        }
        return Ok(("ok".into(), Value::Null));
    }
    Err(("404", format!("no operation at {path}")))
}
