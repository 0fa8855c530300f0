//! Camera ingest authentication, apart from the console's users: the `[http] ingest_allow`
//! networks and/or the `ingest_token` (header `X-Ingest-Token` or query `token=`). A push that
//! fails either gets 403 before it reaches the camera driver, so nothing is recorded.

use crate::config::plan::{IngestAuth, IpNet};
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;

pub const TOKEN_HEADER: &str = "x-ingest-token";

#[derive(Debug, Clone, Default)]
pub struct IngestGuard {
    allow: Vec<IpNet>,
    token: Option<String>,
}

impl IngestGuard {
    /// Reads the token secret now, so a missing env var or file fails at start, not per push.
    pub fn from_plan(auth: &IngestAuth) -> Result<IngestGuard, String> {
        let token = match &auth.token {
            Some(s) => {
                let t = crate::regulator::read_secret(s)
                    .map_err(|e| format!("[http] ingest token: {e}"))?;
                if t.is_empty() {
                    return Err("[http] ingest token is empty".into());
                }
                Some(t)
            }
            None => None,
        };
        Ok(IngestGuard {
            allow: auth.allow.clone(),
            token,
        })
    }

    /// Why the request is refused, or None when it may pass.
    pub fn check(&self, peer: Option<SocketAddr>, req: &Request) -> Option<String> {
        if !self.allow.is_empty() {
            match peer {
                Some(p) if self.allow.iter().any(|n| n.contains(p.ip())) => {}
                Some(p) => return Some(format!("source {} is not in [http] ingest_allow", p.ip())),
                None => return Some("source address unknown".into()),
            }
        }
        if let Some(want) = &self.token {
            let header = req
                .headers()
                .get(TOKEN_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let query = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("token=").map(str::to_string))
            });
            let got = header.or(query);
            if !got.is_some_and(|g| constant_eq(g.as_bytes(), want.as_bytes())) {
                return Some("missing or wrong ingest token".into());
            }
        }
        None
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Wraps the camera ingest routes with the guard.
pub fn guard(router: axum::Router, g: IngestGuard) -> axum::Router {
    let g = Arc::new(g);
    router.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
        let g = Arc::clone(&g);
        async move {
            let peer = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0);
            if let Some(why) = g.check(peer, &req) {
                tracing::warn!(path = %req.uri().path(), peer = ?peer, reason = %why, "camera push refused");
                return (StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
            }
            let r: Response = next.run(req).await;
            r
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses_only() {
        let n = IpNet::parse("192.168.10.0/24").unwrap();
        assert!(n.contains("192.168.10.77".parse().unwrap()));
        assert!(!n.contains("192.168.11.1".parse().unwrap()));
        // An IPv4 client seen on a dual-stack socket.
        assert!(n.contains("::ffff:192.168.10.5".parse().unwrap()));
        let host = IpNet::parse("127.0.0.1").unwrap();
        assert_eq!(host.prefix, 32);
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(IpNet::parse("::1/128")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("cameras").is_err());
    }
}
