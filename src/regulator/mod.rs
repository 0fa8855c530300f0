//! Uplink to regulator platforms (环保门禁 platforms of the city/province): every pass where the
//! barrier opened goes to each enabled platform, exactly as the ledger holds it.
//!
//! - [`outbox`]: per destination a cursor over the ledger plus delivery state; at-least-once,
//!   idempotent serials, causal order per vehicle, live before backlog, unlimited jittered retry.
//! - [`profile`]: `profiles/platform/<name>.toml` — paths, field names, codes, formats.
//! - [`client`]: the one client type the outbox uses, an enum over the protocol shapes:
//!   [`transport_control`] (安车 family), [`kaifeng`] (开封 中科九州), [`hebei`] (河北 一体化).
//! - [`auth`]: auth kinds shared by the header-based shapes (login, static token, signed).
//! - [`mock`]: a strict mock platform (`ecogate sim platform`) for tests and integrators, with
//!   [`mock_kaifeng`] and [`mock_hebei`] for those shapes.
//!
//! docs/platforms.md describes the profile format and the guarantees.

pub mod auth;
pub mod client;
pub mod downlink;
pub mod hebei;
pub mod kaifeng;
pub mod mock;
mod mock_cargo;
pub mod mock_hebei;
pub mod mock_kaifeng;
pub mod outbox;
pub mod profile;
pub mod transport_control;

use crate::config::plan::{Plan, PlatformPlan, Secret};
use crate::ledger::{Ledger, LedgerError};
pub use outbox::{DayKpis, Kpis, OutboxConfig};
use profile::{PlatformProfile, Protocol};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use auth::Credentials;
use client::PlatformClient;
use tokio::sync::watch;
use transport_control::{SiteFacts, TcClient};

#[derive(Debug, thiserror::Error)]
pub enum RegulatorError {
    #[error("platform profile {origin}: {message}")]
    Profile { origin: String, message: String },
    #[error("uplink state {}: {message}", path.display())]
    State { path: PathBuf, message: String },
    #[error("platform `{platform}`: {message}")]
    Config { platform: String, message: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("uplink resend: {0}")]
    Resend(String),
}

/// A running uplink to one platform. Dropping it stops the task (like a crash: whatever was
/// not acknowledged is sent again, with the same serials, at the next start).
pub struct RegulatorUplink {
    name: String,
    kpis: Arc<Mutex<Kpis>>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<Result<(), RegulatorError>>>,
}

/// Reads a secret from its environment variable or file (trailing newline dropped).
pub fn read_secret(s: &Secret) -> Result<String, String> {
    if let Some(v) = &s.env {
        return std::env::var(v).map_err(|_| format!("environment variable `{v}` is not set"));
    }
    if let Some(f) = &s.file {
        return std::fs::read_to_string(f)
            .map(|t| t.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|e| format!("{}: {e}", f.display()));
    }
    Ok(String::new())
}

impl RegulatorUplink {
    /// Starts the uplink of `platform` as a tokio task (call inside a runtime).
    pub fn start(
        plan: &Plan,
        platform: &PlatformPlan,
        ledger: Ledger,
    ) -> Result<RegulatorUplink, RegulatorError> {
        let profile = PlatformProfile::load(&plan.site_file, &platform.profile)?;
        let secret_of = |s: &Option<Secret>| match s {
            Some(s) => read_secret(s).map_err(|message| RegulatorError::Config {
                platform: platform.name.clone(),
                message,
            }),
            None => Ok(String::new()),
        };
        let creds = Credentials {
            username: platform.username.clone().unwrap_or_default(),
            password: secret_of(&platform.password)?,
            secret: secret_of(&platform.secret)?,
        };
        let site = SiteFacts {
            enterprise: plan.enterprise.credit_code.clone(),
            enterprise_name: plan.enterprise.name.clone(),
        };
        let mut cfg = OutboxConfig::new(&platform.name, &plan.data_dir, site);
        cfg.lane_gates = plan
            .lanes
            .iter()
            .map(|l| (l.spec.id.clone(), l.spec.barrier_no.clone()))
            .collect();
        platform.outbox.apply(&mut cfg);
        Self::start_with_credentials(cfg, profile, &platform.url, creds, ledger)
    }

    /// [`RegulatorUplink::start`] without a site plan (tests, tools).
    pub fn start_with(
        cfg: OutboxConfig,
        profile: PlatformProfile,
        url: &str,
        username: &str,
        password: &str,
        ledger: Ledger,
    ) -> Result<RegulatorUplink, RegulatorError> {
        let creds = Credentials {
            username: username.to_string(),
            password: password.to_string(),
            secret: String::new(),
        };
        Self::start_with_credentials(cfg, profile, url, creds, ledger)
    }

    /// [`RegulatorUplink::start_with`] with every credential an auth kind may need.
    pub fn start_with_credentials(
        cfg: OutboxConfig,
        profile: PlatformProfile,
        url: &str,
        creds: Credentials,
        ledger: Ledger,
    ) -> Result<RegulatorUplink, RegulatorError> {
        let name = cfg.name.clone();
        // A damaged state file is reported here, not only in the task's log.
        outbox::load_state(&outbox::state_path(&cfg.data_dir, &name))?;
        let config_err = |e: transport_control::SendError| RegulatorError::Config {
            platform: name.clone(),
            message: e.to_string(),
        };
        if profile.photo.encoding == profile::PhotoEncoding::Url && cfg.photo_url_base.is_none() {
            return Err(RegulatorError::Config {
                platform: name.clone(),
                message: format!(
                    "profile `{}` sends photos as URLs: set `photo_url_base` for this platform",
                    profile.name
                ),
            });
        }
        let profile = Arc::new(profile);
        let client = match profile.protocol {
            Protocol::TransportControl => PlatformClient::TransportControl(
                TcClient::new(
                    url,
                    profile.clone(),
                    &cfg.site.enterprise,
                    &creds.username,
                    &creds.password,
                    cfg.request_timeout,
                )
                .map_err(config_err)?,
                profile,
            ),
            Protocol::Kaifeng => PlatformClient::Kaifeng(
                kaifeng::KaifengClient::new(
                    url,
                    profile,
                    &cfg.site.enterprise,
                    creds,
                    cfg.request_timeout,
                )
                .map_err(config_err)?,
            ),
            Protocol::Hebei => PlatformClient::Hebei(
                hebei::HebeiClient::new(url, profile, creds, cfg.request_timeout)
                    .map_err(config_err)?,
            ),
        };
        let kpis = Arc::new(Mutex::new(Kpis::default()));
        let (stop, rx) = watch::channel(false);
        let k = kpis.clone();
        let n = name.clone();
        let task = tokio::spawn(async move {
            let r = outbox::run(cfg, client, ledger, k, rx).await;
            if let Err(e) = &r {
                tracing::error!(destination = %n, error = %e, "regulator uplink stopped");
            }
            r
        });
        Ok(RegulatorUplink {
            name,
            kpis,
            stop,
            task: Some(task),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The destination's figures as of now.
    pub fn kpis(&self) -> Kpis {
        self.kpis.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// A clonable reader of this uplink's KPIs, for the HTTP API (the uplink itself is owned
    /// by the gateway and stopped through it).
    pub fn kpi_reader(&self) -> KpiReader {
        KpiReader {
            name: self.name.clone(),
            kpis: Arc::clone(&self.kpis),
        }
    }

    /// Stops after the record in flight, if any, and waits for the task.
    pub async fn stop(mut self) -> Result<(), RegulatorError> {
        let _ = self.stop.send(true);
        match self.task.take() {
            Some(t) => t.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for RegulatorUplink {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The figures of every destination that has state under `data_dir`, by name (the HTTP API
/// and `ecogate uplink status` read them; a running uplink writes them with its state). A
/// damaged state file is reported for its destination.
pub fn kpis(data_dir: &Path) -> Vec<(String, Result<Kpis, RegulatorError>)> {
    let dir = data_dir.join("uplink");
    let mut names: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "state"))
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
        .into_iter()
        .map(|p| {
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, outbox::load_state(&p).map(|s| s.kpi))
        })
        .collect()
}

/// Parses a `--from`/`--to` bound: `yyyy-MM-dd HH:mm:ss` (GMT+8) as given, or a date alone —
/// its start for `from`, the start of the next day for `to` (so `--to` a date includes it).
pub fn parse_bound(s: &str, end: bool) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Some(t) = crate::ledger::parse_local_time(s) {
        return Some(t);
    }
    let d = crate::ledger::parse_date(s)?;
    let d = if end { d.succ_opt()? } else { d };
    Some(crate::ledger::local_day_start(d))
}

/// `ecogate uplink resend`: records an `uplink_resend` event asking `platform` to receive the
/// passes and cargo records of `[from, to)` again. The running uplink (or the next start) sends
/// them with their original serials (a cargo record under the serial it first went under). The platform must have uplink state under `data_dir` (a typo in its name
/// would otherwise be recorded and never acted on). Returns the event's seq.
pub async fn request_resend(
    ledger: &Ledger,
    platform: &str,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    operator: &str,
    reason: &str,
) -> Result<i64, RegulatorError> {
    let known: Vec<String> = kpis(ledger.data_dir())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if !known.iter().any(|n| n == platform) {
        return Err(RegulatorError::Resend(format!(
            "no uplink state for platform `{platform}` under {} (known: {})",
            ledger.data_dir().join("uplink").display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    }
    if from >= to {
        return Err(RegulatorError::Resend(format!(
            "--from {} is not before --to {}",
            crate::ledger::local_time(from),
            crate::ledger::local_time(to)
        )));
    }
    for (what, v) in [("--operator", operator), ("--reason", reason)] {
        if v.trim().is_empty() {
            return Err(RegulatorError::Resend(format!("{what} must not be empty")));
        }
    }
    let body = crate::ledger::EventBody::UplinkResend(crate::ledger::UplinkResend {
        platform: platform.to_string(),
        from,
        to,
        operator: operator.to_string(),
        reason: reason.to_string(),
    });
    let r = ledger.append(body, vec![], chrono::Utc::now()).await?;
    Ok(r.seq)
}

/// `ecogate uplink status`: the figures of every destination that has state under `data_dir`,
/// with one row per day (the last `days` days that had passes; 0 = all kept).
pub fn status(data_dir: &Path) -> String {
    status_days(data_dir, 14)
}

/// [`status`] with a chosen number of day rows.
pub fn status_days(data_dir: &Path, days: usize) -> String {
    let all = kpis(data_dir);
    if all.is_empty() {
        return format!(
            "no regulator uplink state under {}\n",
            data_dir.join("uplink").display()
        );
    }
    let now = chrono::Utc::now();
    let mut out = String::new();
    for (name, k) in all {
        match k {
            Ok(k) => {
                let rejected = outbox::load_state(&outbox::state_path(data_dir, &name))
                    .map(|s| s.rejected)
                    .unwrap_or_default();
                out.push_str(&format_kpis(&name, &k, &rejected, now, days));
            }
            Err(e) => out.push_str(&format!("{name}: {e}\n")),
        }
    }
    out
}

fn format_kpis(
    name: &str,
    k: &Kpis,
    rejected: &std::collections::BTreeMap<i64, String>,
    now: chrono::DateTime<chrono::Utc>,
    days: usize,
) -> String {
    let mut s = format!(
        "{name}: captured {} acknowledged {} sent {} failed {} rejected {} backlog {} resent {} completeness {:.1}%\n",
        k.captured,
        k.acknowledged,
        k.sent,
        k.failed,
        k.rejected,
        k.backlog,
        k.resent,
        k.completeness() * 100.0
    );
    if k.cargo_acknowledged > 0 {
        s.push_str(&format!(
            "  cargo records acknowledged {}\n",
            k.cargo_acknowledged
        ));
    }
    if let (Some(t), Some(age)) = (k.oldest_pending, k.backlog_age(now)) {
        s.push_str(&format!(
            "  oldest waiting pass {} ({} s ago)\n",
            crate::ledger::local_time(t),
            age.as_secs()
        ));
    }
    if let Some(t) = k.last_ack_at {
        s.push_str(&format!(
            "  last acknowledged {}\n",
            crate::ledger::local_time(t)
        ));
    }
    if let (Some(e), Some(t)) = (&k.last_error, k.last_error_at) {
        s.push_str(&format!(
            "  last error {}: {e}\n",
            crate::ledger::local_time(t)
        ));
    }
    for (seq, m) in rejected {
        s.push_str(&format!("  refused: event {seq}: {m}\n"));
    }
    if !k.days.is_empty() {
        s.push_str(&format!(
            "  {:<10} {:>9} {:>9} {:>12} {:>7} {:>7} {:>8} {:>8}  {}\n",
            "day",
            "captured",
            "sent",
            "acknowledged",
            "failed",
            "resent",
            "backlog",
            "complete",
            "oldest waiting"
        ));
        let skip = if days == 0 {
            0
        } else {
            k.days.len().saturating_sub(days)
        };
        for (day, d) in k.days.iter().skip(skip) {
            s.push_str(&format!(
                "  {:<10} {:>9} {:>9} {:>12} {:>7} {:>7} {:>8} {:>7.1}%  {}\n",
                day,
                d.captured,
                d.sent,
                d.acknowledged,
                d.failed,
                d.resent,
                d.backlog,
                d.completeness() * 100.0,
                d.oldest_pending
                    .map(crate::ledger::local_time)
                    .unwrap_or_else(|| "-".into())
            ));
        }
    }
    s
}

/// Reads one uplink's live KPIs.
#[derive(Clone)]
pub struct KpiReader {
    pub name: String,
    kpis: Arc<Mutex<Kpis>>,
}

impl KpiReader {
    pub fn kpis(&self) -> Kpis {
        self.kpis.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_cargo_records_only_when_there_are_some() {
        let now = chrono::Utc::now();
        let mut k = Kpis {
            captured: 3,
            acknowledged: 3,
            ..Kpis::default()
        };
        let none = format_kpis("city", &k, &Default::default(), now, 14);
        assert!(!none.contains("cargo"), "{none}");
        k.cargo_acknowledged = 2;
        let some = format_kpis("city", &k, &Default::default(), now, 14);
        assert!(some.contains("cargo records acknowledged 2"), "{some}");
    }
}
