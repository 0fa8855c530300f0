//! Auth kinds shared by the header-based shapes (kaifeng, hebei): a login token, a static token
//! from the site's secret, or signed headers (reference §4.6). The profile names the headers;
//! the site supplies the secrets, which are never logged (their `Debug` is redacted).

use super::profile::{Auth, AuthKind};
use md5::{Digest, Md5};

/// What the site supplies to authenticate: the login user and password, and the secret of
/// `static_token` / `signed` (also the hebei `Client_secret`).
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Lower-case hex md5.
pub fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

/// §4.6: `md5hex(userkey + "|" + timestamp + "|" + md5hex(secret))`.
pub fn signature(userkey: &str, timestamp_ms: i64, secret: &str) -> String {
    md5_hex(&format!("{userkey}|{timestamp_ms}|{}", md5_hex(secret)))
}

/// The auth headers of one request. `token` is the login token (kind `login`); the other kinds
/// ignore it.
pub fn headers(
    auth: &Auth,
    creds: &Credentials,
    token: Option<&str>,
    now_ms: i64,
) -> Vec<(String, String)> {
    match auth.kind {
        AuthKind::Login => match (&auth.token_header, token) {
            (Some(h), Some(t)) => vec![(h.clone(), format!("{}{t}", auth.token_prefix))],
            _ => Vec::new(),
        },
        AuthKind::StaticToken => match &auth.token_header {
            Some(h) => vec![(h.clone(), format!("{}{}", auth.token_prefix, creds.secret))],
            None => Vec::new(),
        },
        AuthKind::Signed => vec![
            (auth.timestamp_header.clone(), now_ms.to_string()),
            (auth.userkey_header.clone(), creds.username.clone()),
            (
                auth.signature_header.clone(),
                signature(&creds.username, now_ms, &creds.secret),
            ),
        ],
    }
}

/// The mock's check of signed headers: the signature matches `secret` and the timestamp is
/// within `skew_ms` of `now_ms`.
pub fn verify_signed(
    auth: &Auth,
    get: impl Fn(&str) -> Option<String>,
    userkey: &str,
    secret: &str,
    now_ms: i64,
    skew_ms: i64,
) -> Result<(), String> {
    let ts = get(&auth.timestamp_header)
        .ok_or_else(|| format!("missing header `{}`", auth.timestamp_header))?;
    let t: i64 = ts.parse().map_err(|_| {
        format!(
            "`{}` = `{ts}` is not ms since the epoch",
            auth.timestamp_header
        )
    })?;
    if (now_ms - t).abs() > skew_ms {
        return Err(format!(
            "`{}` = {t} is more than {skew_ms} ms off",
            auth.timestamp_header
        ));
    }
    let key = get(&auth.userkey_header)
        .ok_or_else(|| format!("missing header `{}`", auth.userkey_header))?;
    if key != userkey {
        return Err(format!("unknown user key `{key}`"));
    }
    let sig = get(&auth.signature_header)
        .ok_or_else(|| format!("missing header `{}`", auth.signature_header))?;
    if sig != signature(userkey, t, secret) {
        return Err("signature does not match".into());
    }
    Ok(())
}

/// A login token shared by the delivery tasks of one destination. The lock is held across a
/// login so concurrent deliveries wait for one login instead of making many.
#[derive(Default)]
pub struct TokenCache {
    token: tokio::sync::Mutex<Option<(String, std::time::Instant)>>,
    logins: std::sync::atomic::AtomicU64,
}

impl TokenCache {
    pub fn logins(&self) -> u64 {
        self.logins.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current token, or a new one from `login` when there is none or it ran out.
    pub async fn get<F, Fut, E>(&self, ttl: std::time::Duration, login: F) -> Result<String, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<String, E>>,
    {
        let mut g = self.token.lock().await;
        if let Some((t, until)) = &*g {
            if std::time::Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let t = login().await?;
        self.logins
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *g = Some((t.clone(), std::time::Instant::now() + ttl));
        Ok(t)
    }

    /// Drops `refused` unless another task already replaced it.
    pub async fn forget(&self, refused: &str) {
        let mut g = self.token.lock().await;
        if g.as_ref().is_some_and(|(t, _)| t == refused) {
            *g = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_and_signature_match_known_values() {
        // RFC 1321 test vectors.
        assert_eq!(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex("abc"), "900150983cd24fb0d6963f7d28e17f72");
        // md5("abc") = 9001…7f72, so the signed text is "u|1700000000000|9001…7f72".
        let want = md5_hex("u|1700000000000|900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(signature("u", 1_700_000_000_000, "abc"), want);
        assert_ne!(signature("u", 1_700_000_000_000, "abd"), want);
    }

    #[test]
    fn credentials_debug_hides_secrets() {
        let c = Credentials {
            username: "gate".into(),
            password: "pw-123".into(),
            secret: "sec-456".into(),
        };
        let d = format!("{c:?}");
        assert!(d.contains("gate") && !d.contains("pw-123") && !d.contains("sec-456"));
    }
}
