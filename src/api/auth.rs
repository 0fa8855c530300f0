//! Operator accounts, sessions and login throttling. Accounts live in `<data_dir>/users.db`
//! (not in the hash-chained log: a password change must not be history an inspector reads),
//! but every change to them is also a `user_change` ledger event naming who made it.

use super::error::ApiError;
use super::ApiState;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use rand_core::{OsRng, RngCore};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const USERS_DB: &str = "users.db";
pub const COOKIE: &str = "ecogate_session";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("users database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("user `{0}` already exists")]
    Exists(String),
    #[error("no user `{0}`")]
    NoUser(String),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("password hashing failed: {0}")]
    Hash(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Guard,
    Supervisor,
    EnvManager,
    Admin,
    /// Read-only everywhere (核查 inspectors).
    Inspector,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Guard,
        Role::Supervisor,
        Role::EnvManager,
        Role::Admin,
        Role::Inspector,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Guard => "guard",
            Role::Supervisor => "supervisor",
            Role::EnvManager => "env_manager",
            Role::Admin => "admin",
            Role::Inspector => "inspector",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s.trim())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub username: String,
    pub display_name: String,
    pub role: Role,
}

fn check_username(u: &str) -> Result<(), AuthError> {
    let ok = !u.is_empty()
        && u.len() <= 64
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid {
            field: "username",
            reason: format!("`{u}` must be 1–64 ASCII letters, digits, `_`, `-` or `.`"),
        })
    }
}

fn check_password(p: &str) -> Result<(), AuthError> {
    if p.chars().count() < 6 {
        return Err(AuthError::Invalid {
            field: "password",
            reason: "must have at least 6 characters".into(),
        });
    }
    Ok(())
}

pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

pub fn verify_password(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The accounts table. One connection behind a mutex: logins are rare and short.
pub struct UserStore {
    conn: Mutex<Connection>,
}

impl UserStore {
    pub fn open(data_dir: &Path) -> Result<UserStore, AuthError> {
        std::fs::create_dir_all(data_dir).map_err(|e| AuthError::Invalid {
            field: "data_dir",
            reason: format!("{}: {e}", data_dir.display()),
        })?;
        let conn = Connection::open(data_dir.join(USERS_DB))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS users (
                username TEXT PRIMARY KEY,
                display_name TEXT NOT NULL,
                role TEXT NOT NULL,
                phc TEXT NOT NULL,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL
            );",
        )?;
        Ok(UserStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding it cannot leave a half-written row (SQLite is atomic).
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_empty(&self) -> Result<bool, AuthError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
        Ok(n == 0)
    }

    pub fn list(&self) -> Result<Vec<User>, AuthError> {
        let c = self.conn();
        let mut stmt =
            c.prepare("SELECT username, display_name, role FROM users ORDER BY username")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (username, display_name, role) = row?;
            // A role this build does not know (edited by hand) is left out rather than guessed.
            if let Some(role) = Role::parse(&role) {
                out.push(User {
                    username,
                    display_name,
                    role,
                });
            }
        }
        Ok(out)
    }

    /// The user and its password hash.
    pub fn get(&self, username: &str) -> Result<Option<(User, String)>, AuthError> {
        let row = self
            .conn()
            .query_row(
                "SELECT username, display_name, role, phc FROM users WHERE username = ?1",
                [username],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()?;
        Ok(row.and_then(|(username, display_name, role, phc)| {
            Role::parse(&role).map(|role| {
                (
                    User {
                        username,
                        display_name,
                        role,
                    },
                    phc,
                )
            })
        }))
    }

    pub fn create(
        &self,
        username: &str,
        display_name: &str,
        role: Role,
        password: &str,
    ) -> Result<User, AuthError> {
        check_username(username)?;
        check_password(password)?;
        let display = if display_name.trim().is_empty() {
            username.to_string()
        } else {
            display_name.trim().to_string()
        };
        let phc = hash_password(password)?;
        let now = crate::ledger::db_time(Utc::now());
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO users(username, display_name, role, phc, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![username, display, role.name(), phc, now],
        )?;
        if n == 0 {
            return Err(AuthError::Exists(username.into()));
        }
        Ok(User {
            username: username.into(),
            display_name: display,
            role,
        })
    }

    pub fn set_password(&self, username: &str, password: &str) -> Result<(), AuthError> {
        check_password(password)?;
        let phc = hash_password(password)?;
        let now = crate::ledger::db_time(Utc::now());
        let n = self.conn().execute(
            "UPDATE users SET phc = ?2, updated_at = ?3 WHERE username = ?1",
            params![username, phc, now],
        )?;
        if n == 0 {
            return Err(AuthError::NoUser(username.into()));
        }
        Ok(())
    }

    /// Checks a password. Unknown users cost a hash too, so timing does not tell which
    /// usernames exist.
    pub fn authenticate(&self, username: &str, password: &str) -> Result<Option<User>, AuthError> {
        match self.get(username)? {
            Some((u, phc)) if verify_password(&phc, password) => Ok(Some(u)),
            Some(_) => Ok(None),
            None => {
                let _ = hash_password(password);
                Ok(None)
            }
        }
    }
}

/// A new session token: 256 random bits, hex.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

struct Session {
    user: User,
    expires: DateTime<Utc>,
}

/// Live sessions, in memory: a restart logs everyone out, which is acceptable at a gate house.
pub struct Sessions {
    ttl: chrono::Duration,
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl: chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(12)),
            map: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn create(&self, user: User) -> (String, DateTime<Utc>) {
        let token = new_token();
        let expires = Utc::now() + self.ttl;
        let mut m = self.map();
        let now = Utc::now();
        m.retain(|_, s| s.expires > now);
        m.insert(token.clone(), Session { user, expires });
        (token, expires)
    }

    /// The session's user, extending its expiry (sliding); None when unknown or expired.
    pub fn touch(&self, token: &str) -> Option<User> {
        let mut m = self.map();
        let now = Utc::now();
        match m.get_mut(token) {
            Some(s) if s.expires > now => {
                s.expires = now + self.ttl;
                Some(s.user.clone())
            }
            Some(_) => {
                m.remove(token);
                None
            }
            None => None,
        }
    }

    pub fn end(&self, token: &str) {
        self.map().remove(token);
    }
}

/// Login throttling: after [`Throttle::MAX_FAILURES`] failures for one username or from one
/// address within the window, further attempts are refused for the lockout time.
/// Recent failures of one key, and the end of its lockout.
type Failures = (VecDeque<Instant>, Option<Instant>);

pub struct Throttle {
    state: Mutex<HashMap<String, Failures>>,
    window: Duration,
    lockout: Duration,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            state: Mutex::new(HashMap::new()),
            window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(15 * 60),
        }
    }
}

impl Throttle {
    pub const MAX_FAILURES: usize = 5;

    fn keys(username: &str, ip: Option<IpAddr>) -> Vec<String> {
        let mut k = vec![format!("user:{username}")];
        if let Some(ip) = ip {
            k.push(format!("ip:{ip}"));
        }
        k
    }

    /// Seconds left of a lockout on either key.
    pub fn locked(&self, username: &str, ip: Option<IpAddr>) -> Option<u64> {
        let now = Instant::now();
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Self::keys(username, ip)
            .iter()
            .filter_map(|k| st.get(k).and_then(|(_, until)| *until))
            .filter(|until| *until > now)
            .map(|until| (until - now).as_secs().max(1))
            .max()
    }

    /// Records a failure; returns true when it started a lockout.
    pub fn failed(&self, username: &str, ip: Option<IpAddr>) -> bool {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut locked = false;
        for k in Self::keys(username, ip) {
            let (fails, until) = st.entry(k).or_default();
            while fails.front().is_some_and(|t| now - *t > self.window) {
                fails.pop_front();
            }
            fails.push_back(now);
            if fails.len() >= Self::MAX_FAILURES && until.map_or(true, |u| u <= now) {
                *until = Some(now + self.lockout);
                fails.clear();
                locked = true;
            }
        }
        locked
    }

    pub fn succeeded(&self, username: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.remove(&format!("user:{username}"));
    }
}

/// The session token of a request: the cookie, or `Authorization: Bearer`.
pub fn token_of(parts: &Parts) -> Option<String> {
    if let Some(v) = parts.headers.get(header::AUTHORIZATION) {
        if let Some(t) = v.to_str().ok().and_then(|s| s.strip_prefix("Bearer ")) {
            return Some(t.trim().to_string());
        }
    }
    for v in parts.headers.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for c in s.split(';') {
            if let Some((k, v)) = c.trim().split_once('=') {
                if k == COOKIE {
                    return Some(v.to_string());
                }
            }
        }
    }
    None
}

/// The authenticated user of a request; rejects with 401 `unauthenticated`.
pub struct AuthUser {
    pub user: User,
    pub token: String,
}

impl AuthUser {
    /// 403 unless the user has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.user.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "role `{}` may not do this; allowed: {}",
                self.user.role.name(),
                roles
                    .iter()
                    .map(|r| r.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }
}

impl FromRequestParts<ApiState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Self, ApiError> {
        let Some(token) = token_of(parts) else {
            return Err(ApiError::unauthenticated(
                "no session: log in at POST /api/v1/login and send the cookie or `Authorization: Bearer <token>`",
            ));
        };
        match s.inner.sessions.touch(&token) {
            Some(user) => Ok(AuthUser { user, token }),
            None => Err(ApiError::unauthenticated(
                "the session is unknown or has expired; log in again",
            )),
        }
    }
}

/// Roles that may change things (everyone but the inspector).
pub const WRITERS: &[Role] = &[Role::Guard, Role::Supervisor, Role::EnvManager, Role::Admin];

/// The client's address, when the listener records it (`into_make_service_with_connect_info`).
pub struct PeerAddr(pub Option<std::net::SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_to_phc_and_verify() {
        let h = hash_password("guard123").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "guard123"));
        assert!(!verify_password(&h, "guard124"));
        assert!(!verify_password("not a phc", "guard123"));
        // Salted: the same password hashes differently each time.
        assert_ne!(h, hash_password("guard123").unwrap());
    }

    #[test]
    fn tokens_are_256_random_bits() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn throttle_locks_a_username_and_an_address_after_five_failures() {
        let t = Throttle::default();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        for i in 0..4 {
            assert!(!t.failed("guard", Some(ip)), "locked early at {i}");
        }
        assert!(t.locked("guard", Some(ip)).is_none());
        assert!(t.failed("guard", Some(ip)));
        assert!(t.locked("guard", None).is_some());
        assert!(t.locked("other", Some(ip)).is_some());
        assert!(t
            .locked("other", Some("10.1.2.4".parse().unwrap()))
            .is_none());
    }

    #[test]
    fn users_are_stored_without_their_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let s = UserStore::open(dir.path()).unwrap();
        assert!(s.is_empty().unwrap());
        s.create("guard", "门卫张三", Role::Guard, "guard123")
            .unwrap();
        assert!(matches!(
            s.create("guard", "", Role::Admin, "xxxxxx"),
            Err(AuthError::Exists(_))
        ));
        assert!(s.authenticate("guard", "guard123").unwrap().is_some());
        assert!(s.authenticate("guard", "nope12").unwrap().is_none());
        assert!(s.authenticate("nobody", "guard123").unwrap().is_none());
        s.set_password("guard", "newpass1").unwrap();
        assert!(s.authenticate("guard", "newpass1").unwrap().is_some());
        let raw = std::fs::read(dir.path().join(USERS_DB)).unwrap();
        assert!(!raw.windows(8).any(|w| w == b"newpass1"));
        assert_eq!(s.list().unwrap()[0].display_name, "门卫张三");
    }
}
