//! Uplink to regulator platforms (环保门禁 platforms of the city/province): every pass where the
//! barrier opened goes to each enabled platform, exactly as the ledger holds it.
//!
//! - [`outbox`]: per destination a cursor over the ledger plus delivery state; at-least-once,
//!   idempotent serials, causal order per vehicle, live before backlog, unlimited jittered retry.
//! - [`profile`]: `profiles/platform/<name>.toml` — paths, field names, codes, formats.
//! - [`transport_control`]: the transportControl protocol shape and its HTTP client.
//! - [`mock`]: a strict mock platform (`ecogate sim platform`) for tests and integrators.
//!
//! docs/platforms.md describes the profile format and the guarantees.

pub mod mock;
pub mod outbox;
pub mod profile;
pub mod transport_control;

use crate::config::plan::{Plan, PlatformPlan, Secret};
use crate::ledger::{Ledger, LedgerError};
pub use outbox::{Kpis, OutboxConfig};
use profile::{PlatformProfile, Protocol};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
        let password = match &platform.password {
            Some(s) => read_secret(s).map_err(|message| RegulatorError::Config {
                platform: platform.name.clone(),
                message,
            })?,
            None => String::new(),
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
        Self::start_with(
            cfg,
            profile,
            &platform.url,
            platform.username.as_deref().unwrap_or(""),
            &password,
            ledger,
        )
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
        let Protocol::TransportControl = profile.protocol;
        let name = cfg.name.clone();
        // A damaged state file is reported here, not only in the task's log.
        outbox::load_state(&outbox::state_path(&cfg.data_dir, &name))?;
        let client = TcClient::new(
            url,
            Arc::new(profile),
            &cfg.site.enterprise,
            username,
            password,
            Duration::from_secs(15),
        )
        .map_err(|e| RegulatorError::Config {
            platform: name.clone(),
            message: e.to_string(),
        })?;
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

/// `ecogate uplink status`: the figures of every destination that has state under `data_dir`.
pub fn status(data_dir: &Path) -> String {
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
    if names.is_empty() {
        return format!("no regulator uplink state under {}\n", dir.display());
    }
    let now = chrono::Utc::now();
    let mut out = String::new();
    for p in names {
        let name = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match outbox::load_state(&p) {
            Ok(s) => out.push_str(&format_kpis(&name, &s.kpi, &s.rejected, now)),
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
) -> String {
    let mut s = format!(
        "{name}: captured {} acknowledged {} sent {} failed {} rejected {} backlog {} completeness {:.1}%\n",
        k.captured,
        k.acknowledged,
        k.sent,
        k.failed,
        k.rejected,
        k.backlog,
        k.completeness() * 100.0
    );
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
