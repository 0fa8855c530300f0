//! `ecogate run`: one site, live. Devices by profile, one task per lane, the ledger, the HTTP
//! listener (camera ingest, `/healthz`, `/metrics`), and the event router between them.

use crate::config::Plan;
use crate::decide::SiteDecider;
use crate::devices::{self, Devices};
use crate::health;
use crate::lane::engine::{Input, Lane};
use crate::ledger::registry::SqliteRegistry;
use crate::ledger::Ledger;
use crate::registry::VehicleRegistry;
use crate::runtime::{self, CommandBus, LaneDeps, LaneHandle, Router};
use anyhow::Context as _;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Utc};
use ecogate_drivers::{DeviceEvent, EventKind, UpsStatus};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    /// Override `[http] listen` (e.g. 127.0.0.1:0 for an ephemeral port in tests).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

/// A running site.
pub struct Gateway {
    pub plan: Arc<Plan>,
    pub lanes: Vec<LaneHandle>,
    pub devices: Devices,
    pub ledger: Ledger,
    pub decider: Arc<SiteDecider>,
    pub http_addr: SocketAddr,
    /// Devices that could not be started (their lanes run degraded).
    pub device_errors: Vec<String>,
    /// The MQTT bridge to SCADA, when `[uplinks.mqtt]` is configured. Dropping it cuts the
    /// connection (the broker then publishes the site offline).
    pub mqtt: Option<crate::uplink::MqttBridge>,
    /// The Sparkplug B edge node, when `styles` includes `sparkplug`. Dropping it cuts its
    /// connection (the broker then publishes its NDEATH).
    pub sparkplug: Option<crate::uplink::sparkplug::SparkplugNode>,
    /// One uplink per enabled `[[uplinks.platforms]]`, each over its own ledger cursor. The
    /// health checks and the MQTT bridge read their KPIs through weak references.
    pub regulators: Vec<Arc<crate::regulator::RegulatorUplink>>,
    /// Heartbeats and control-measure / white-list polls, per platform that has them.
    pub downlinks: Vec<crate::regulator::downlink::Downlink>,
    /// Becomes true when the UPS reports battery low: the site is about to lose power.
    pub power_loss: watch::Receiver<bool>,
    /// Active alarms, their severity and acknowledgements (every change is a ledger event).
    pub alarms: crate::alarm::AlarmBoard,
    /// The operator API's state (users, sessions, release requests).
    pub api: crate::api::ApiState,
}

#[derive(Clone)]
struct Http {
    lanes: Vec<LaneHandle>,
    health: Vec<(
        String,
        tokio::sync::watch::Receiver<ecogate_drivers::DeviceHealth>,
    )>,
    ledger: Ledger,
    site: String,
    uplinks: Vec<crate::regulator::KpiReader>,
    downlinks: Vec<(
        String,
        Arc<std::sync::Mutex<crate::regulator::downlink::DownlinkStats>>,
    )>,
}

impl Gateway {
    /// Starts everything; returns once the HTTP listener is bound.
    /// `registry` replaces the site's SQLite registries (the demo's generated fleet, tests).
    pub async fn start(
        plan: Plan,
        listen: Option<SocketAddr>,
        registry: Option<Arc<dyn VehicleRegistry>>,
    ) -> anyhow::Result<Gateway> {
        Self::start_with_sink(plan, listen, registry, |ledger| ledger).await
    }

    /// [`Gateway::start`] with the lanes' records going to `sink(ledger)` instead of the site's
    /// ledger itself: tests put a slow or failing sink in front of it to prove
    /// record-before-barrier on the real path (camera, lane task, relay module).
    pub async fn start_with_sink<S, F>(
        plan: Plan,
        listen: Option<SocketAddr>,
        registry: Option<Arc<dyn VehicleRegistry>>,
        sink: F,
    ) -> anyhow::Result<Gateway>
    where
        S: runtime::RecordSink,
        F: FnOnce(Ledger) -> S + Send,
    {
        let plan = Arc::new(plan);
        let ledger = Ledger::open(&plan.data_dir)
            .with_context(|| format!("opening the ledger in {}", plan.data_dir.display()))?;
        let registry: Arc<dyn VehicleRegistry> = match registry {
            Some(r) => r,
            None => Arc::new(SqliteRegistry::open(&plan.data_dir).with_context(|| {
                format!("opening the registries in {}", plan.data_dir.display())
            })?),
        };
        let mut decider = SiteDecider::new(plan.policy.clone(), registry);
        if let Some(checker) = crate::regulator::downlink::checker_for(&plan)
            .context("setting up the platform vehicle check")?
        {
            decider = decider.with_checker(checker);
        }
        let decider = Arc::new(decider);

        let (events_tx, mut events_rx) = mpsc::channel::<DeviceEvent>(4096);
        let (devices, device_errors) = devices::spawn_all(&plan.devices, events_tx.clone());
        for e in &device_errors {
            tracing::error!(error = %e, "device not started; its lanes run degraded");
        }
        let mut bus = CommandBus::new();
        for (name, h) in &devices.handles {
            bus.attach(name, h.commands.clone());
        }

        let alarm_board = crate::alarm::AlarmBoard::new(ledger.clone());
        if let Err(e) = alarm_board.restore().await {
            tracing::error!(error = %e, "alarm board not rebuilt from the ledger; it starts empty");
        }
        let site_alarms = alarm_board.spawn_recorder();
        for (name, h) in devices.health() {
            health::watch_device(name, h, Duration::from_secs(10), site_alarms.clone());
        }
        let alarm_tx = site_alarms.clone();

        let deps = LaneDeps {
            decider: Arc::clone(&decider),
            sink: Arc::new(sink(ledger.clone())),
            bus: Arc::new(bus),
            alarms: alarm_tx,
        };
        let mut lanes = Vec::new();
        for l in &plan.lanes {
            let (h, _task) = runtime::spawn_lane(
                Lane::new(l.spec.clone(), Arc::clone(&l.machine)),
                deps.clone(),
            );
            lanes.push(h);
        }

        let mut regulators = Vec::new();
        for p in plan.platforms.iter().filter(|p| p.enabled) {
            regulators.push(Arc::new(
                crate::regulator::RegulatorUplink::start(&plan, p, ledger.clone())
                    .with_context(|| format!("starting the uplink to platform `{}`", p.name))?,
            ));
        }
        let mut downlinks = Vec::new();
        let device_health = devices.health();
        for p in plan.platforms.iter().filter(|p| p.enabled) {
            let d = crate::regulator::downlink::start_for(
                &plan,
                p,
                &device_health,
                decider.state(),
                Some(ledger.clone()),
                Some(site_alarms.clone()),
            )
            .with_context(|| format!("starting the downlink of platform `{}`", p.name))?;
            downlinks.extend(d);
        }
        let uplink_kpis = kpi_source(&regulators);
        let activity = health_checks(&plan, &devices, &lanes, &ledger, &uplink_kpis)
            .spawn_with(site_alarms.clone());
        let mqtt = match plan.mqtt.as_ref().filter(|m| m.json) {
            Some(m) => Some(
                crate::uplink::MqttBridge::start_with(
                    crate::uplink::MqttConfig::from_plan(m, &plan.site_id)?,
                    &plan.site_id,
                    ledger.clone(),
                    lanes.clone(),
                    devices.health().into_iter().collect(),
                    &plan.data_dir,
                    crate::uplink::mqtt::BridgeExtras {
                        alarms: Some(alarm_board.clone()),
                        uplinks: Some(uplink_kpis.clone()),
                    },
                )
                .await?,
            ),
            None => None,
        };
        let sparkplug = match &plan.mqtt {
            Some(m) => {
                match crate::uplink::sparkplug::SparkplugConfig::from_plan(m, &plan.site_id)? {
                    Some(cfg) => Some(
                        crate::uplink::sparkplug::SparkplugNode::start(
                            cfg,
                            &plan.site_id,
                            crate::uplink::sparkplug::Sources {
                                lanes: lanes.clone(),
                                devices: devices.health().into_iter().collect(),
                                ledger: Some(ledger.clone()),
                                alarms: Some(alarm_board.clone()),
                                uplinks: Some(uplink_kpis),
                            },
                            &plan.data_dir,
                        )
                        .await?,
                    ),
                    None => None,
                }
            }
            None => None,
        };

        let (power_tx, power_loss) = watch::channel(false);
        let mut router = Router::new(&plan);
        let inputs: Vec<_> = lanes.iter().map(|h| h.inputs.clone()).collect();
        tokio::spawn(async move {
            let mut ups: HashMap<String, (health::UpsMonitor, UpsStatus)> = HashMap::new();
            while let Some(ev) = events_rx.recv().await {
                activity.observe(&ev);
                // A Megatec UPS reports its status; a dry-contact UPS is two inputs of an IO
                // module named `ups_on_battery` / `ups_battery_low` (debounced by the driver).
                let status = match &ev.kind {
                    EventKind::Ups(u) => Some(u.clone()),
                    EventKind::Input { input, active }
                        if input == "ups_on_battery" || input == "ups_battery_low" =>
                    {
                        let mut s = ups
                            .get(&ev.device)
                            .map(|(_, s)| s.clone())
                            .unwrap_or_default();
                        if input == "ups_on_battery" {
                            s.on_battery = *active;
                        } else {
                            s.battery_low = *active;
                        }
                        Some(s)
                    }
                    _ => None,
                };
                if let Some(u) = status {
                    let (monitor, last) = ups.entry(ev.device.clone()).or_default();
                    *last = u.clone();
                    // Battery low: every lane goes to its power-loss state (once per episode).
                    if monitor.update(&ev.device, &u, &site_alarms) {
                        tracing::error!(device = %ev.device, "UPS battery low: lanes to power-loss mode");
                        for tx in &inputs {
                            let _ = tx.try_send(Input::PowerLoss);
                        }
                        let _ = power_tx.send(true);
                    }
                }
                for (i, input) in router.route(ev) {
                    if let Some(tx) = inputs.get(i) {
                        // A lane that stopped draining its queue must not stall the others.
                        if tx.try_send(input).is_err() {
                            tracing::warn!(lane = i, "lane input queue full; event dropped");
                        }
                    }
                }
            }
        });

        let state = Http {
            lanes: lanes.clone(),
            health: devices.health().into_iter().collect(),
            ledger: ledger.clone(),
            site: plan.site_id.clone(),
            uplinks: regulators.iter().map(|r| r.kpi_reader()).collect(),
            downlinks: downlinks
                .iter()
                .map(|d| (d.name().to_string(), d.stats_handle()))
                .collect(),
        };
        let api = crate::api::ApiState::new(crate::api::ApiParts {
            plan: Arc::clone(&plan),
            lanes: lanes.clone(),
            ledger: ledger.clone(),
            decider: Arc::clone(&decider),
            devices: devices.health().into_iter().collect(),
            uplinks: regulators.iter().map(|r| r.kpi_reader()).collect(),
            alarms: alarm_board.clone(),
        })
        .context("opening the operator accounts")?;
        let ingest =
            crate::api::ingest::IngestGuard::from_plan(&plan.ingest).map_err(anyhow::Error::msg)?;
        let app = crate::api::ingest::guard(
            ecogate_drivers::camera::ingest_router(devices.ingest.clone()),
            ingest,
        )
        .merge(
            axum::Router::new()
                .route("/healthz", get(healthz))
                .route("/metrics", get(metrics))
                .with_state(state),
        )
        .merge(crate::api::routes(api.clone()));
        let addr = listen.unwrap_or(plan.http_listen);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTP listener on {addr}"))?;
        let http_addr = listener.local_addr()?;
        tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "HTTP listener stopped");
            }
        });
        tracing::info!(site = %plan.site_id, http = %http_addr, lanes = lanes.len(), devices = devices.handles.len(), "site running");
        Ok(Gateway {
            plan,
            lanes,
            devices,
            ledger,
            decider,
            http_addr,
            device_errors,
            mqtt,
            sparkplug,
            regulators,
            downlinks,
            power_loss,
            alarms: alarm_board,
            api,
        })
    }
}

async fn healthz(State(s): State<Http>) -> impl IntoResponse {
    let lanes: Vec<_> = s.lanes.iter().map(|l| l.status.borrow().clone()).collect();
    let devices: serde_json::Map<String, serde_json::Value> = s
        .health
        .iter()
        .map(|(n, h)| {
            (
                n.clone(),
                serde_json::to_value(&*h.borrow()).unwrap_or_default(),
            )
        })
        .collect();
    let head = s.ledger.head();
    let body = serde_json::json!({
        "site": s.site,
        "time": Utc::now(),
        "ledger_head": head.to_string(),
        "lanes": lanes,
        "devices": devices,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// One Prometheus metric family: HELP, TYPE and a line per labelled value.
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: impl IntoIterator<Item = (String, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in rows {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}

async fn metrics(State(s): State<Http>) -> impl IntoResponse {
    let mut out = String::new();
    let lane = |f: fn(&runtime::LaneStatus) -> u64| {
        s.lanes
            .iter()
            .map(|l| {
                let st = l.status.borrow();
                (format!("site=\"{}\",lane=\"{}\"", s.site, st.lane), f(&st))
            })
            .collect::<Vec<_>>()
    };
    let device = |f: fn(&ecogate_drivers::DeviceHealth) -> u64| {
        s.health
            .iter()
            .map(|(n, h)| {
                (
                    format!("site=\"{}\",device=\"{n}\"", s.site),
                    f(&h.borrow()),
                )
            })
            .collect::<Vec<_>>()
    };
    family(
        &mut out,
        "ecogate_lane_records_total",
        "counter",
        "Records made durable by the lane.",
        lane(|st| st.records),
    );
    family(
        &mut out,
        "ecogate_lane_record_failures_total",
        "counter",
        "Records that could not be made durable.",
        lane(|st| st.record_failures),
    );
    family(
        &mut out,
        "ecogate_device_online",
        "gauge",
        "1 when the device answers.",
        device(|h| u64::from(h.online)),
    );
    family(
        &mut out,
        "ecogate_device_errors_total",
        "counter",
        "Failed requests or frames.",
        device(|h| h.errors),
    );
    let now = Utc::now();
    let kpis: Vec<(String, crate::regulator::Kpis)> = s
        .uplinks
        .iter()
        .map(|u| {
            (
                format!("site=\"{}\",platform=\"{}\"", s.site, u.name),
                u.kpis(),
            )
        })
        .collect();
    let uplink = |f: fn(&crate::regulator::Kpis, DateTime<Utc>) -> u64| {
        kpis.iter()
            .map(|(l, k)| (l.clone(), f(k, now)))
            .collect::<Vec<_>>()
    };
    family(
        &mut out,
        "ecogate_uplink_acknowledged_total",
        "counter",
        "Records the platform acknowledged.",
        uplink(|k, _| k.acknowledged),
    );
    family(
        &mut out,
        "ecogate_uplink_cargo_acknowledged_total",
        "counter",
        "Cargo records the platform acknowledged.",
        uplink(|k, _| k.cargo_acknowledged),
    );
    family(
        &mut out,
        "ecogate_uplink_failed_total",
        "counter",
        "Failed upload attempts (network, 5xx, refusals).",
        uplink(|k, _| k.failed),
    );
    family(
        &mut out,
        "ecogate_uplink_backlog",
        "gauge",
        "Records waiting for the platform's acknowledgement.",
        uplink(|k, _| k.backlog),
    );
    family(
        &mut out,
        "ecogate_uplink_oldest_pending_seconds",
        "gauge",
        "Age of the oldest waiting record (0 when none waits).",
        uplink(|k, now| {
            k.oldest_pending
                .map_or(0, |t| (now - t).num_seconds().max(0) as u64)
        }),
    );
    let dl: Vec<(String, crate::regulator::downlink::DownlinkStats)> = s
        .downlinks
        .iter()
        .map(|(name, st)| {
            (
                format!("site=\"{}\",platform=\"{name}\"", s.site),
                st.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            )
        })
        .collect();
    let downlink = |f: fn(&crate::regulator::downlink::DownlinkStats) -> u64| {
        dl.iter()
            .map(|(l, st)| (l.clone(), f(st)))
            .collect::<Vec<_>>()
    };
    family(
        &mut out,
        "ecogate_downlink_heartbeats_total",
        "counter",
        "Heartbeats the platform accepted.",
        downlink(|d| d.heartbeats),
    );
    family(
        &mut out,
        "ecogate_downlink_heartbeat_failures_total",
        "counter",
        "Heartbeats that failed.",
        downlink(|d| d.heartbeat_failures),
    );
    family(
        &mut out,
        "ecogate_downlink_policy_failures_total",
        "counter",
        "Control-measure and white-list polls that failed.",
        downlink(|d| d.policy_failures),
    );
    family(
        &mut out,
        "ecogate_downlink_measure_changes_total",
        "counter",
        "Control-measure and white-list changes recorded.",
        downlink(|d| d.measure_changes),
    );
    family(
        &mut out,
        "ecogate_ledger_events",
        "gauge",
        "Events in the ledger.",
        [(
            format!("site=\"{}\"", s.site),
            s.ledger.head().seq.max(0) as u64,
        )],
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let plan = match crate::config::load(&args.config) {
        Ok(p) => p,
        Err(d) => {
            eprintln!("{d}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut gw = Gateway::start(plan, args.listen, None).await?;
        println!(
            "ecogate: site `{}` running, {} lane(s), HTTP on {}",
            gw.plan.site_id,
            gw.lanes.len(),
            gw.http_addr
        );
        for e in &gw.device_errors {
            println!("  not started: {e}");
        }
        let mut power = gw.power_loss.clone();
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
            _ = power.wait_for(|low| *low) => {
                // Battery low: the lanes are in power-loss mode; give the records and alarms in
                // flight a moment to commit, then stop cleanly before the power goes.
                println!("ecogate: UPS battery low: lanes in power-loss mode, stopping");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        gw.stop().await;
        println!("ecogate: stopped; ledger head {}", gw.ledger.head());
        Ok(ExitCode::SUCCESS)
    })
}

impl Gateway {
    /// Stops the uplinks cleanly (the MQTT bridge publishes offline; each regulator uplink
    /// finishes the record in flight). Every record is already durable when it is appended.
    pub async fn stop(&mut self) {
        if let Some(n) = self.sparkplug.take() {
            n.shutdown().await;
        }
        if let Some(b) = self.mqtt.take() {
            b.shutdown().await;
        }
        for d in self.downlinks.drain(..) {
            d.stop().await;
        }
        for r in self.regulators.drain(..) {
            // Only weak references exist elsewhere; one may be upgraded for a moment.
            let mut r = r;
            for _ in 0..50 {
                match Arc::try_unwrap(r) {
                    Ok(u) => {
                        let _ = u.stop().await;
                        break;
                    }
                    Err(again) => {
                        r = again;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
    }
}

/// The uplinks' KPIs, read through weak references so that [`Gateway::stop`] can take each
/// uplink back.
fn kpi_source(regulators: &[Arc<crate::regulator::RegulatorUplink>]) -> health::UplinkKpis {
    let weak: Vec<_> = regulators.iter().map(Arc::downgrade).collect();
    Arc::new(move || {
        weak.iter()
            .filter_map(|w| w.upgrade())
            .map(|r| (r.name().to_string(), r.kpis()))
            .collect()
    })
}

/// camera_silent, scale_stuck, upload_backlog, clock_drift (against each enabled platform's
/// HTTP Date) and disk_space, with the site's `[health]` thresholds.
fn health_checks(
    plan: &Plan,
    devices: &Devices,
    lanes: &[LaneHandle],
    ledger: &Ledger,
    kpis: &health::UplinkKpis,
) -> health::HealthChecks {
    use crate::lane::builtin::Role;
    let mut c =
        health::HealthChecks::new(plan.health.clone(), ledger.clone(), plan.retention_months);
    let health = devices.health();
    let mut scales: std::collections::BTreeMap<String, Vec<_>> = Default::default();
    for (l, h) in plan.lanes.iter().zip(lanes) {
        if let Some(cam) = l.spec.bindings.get(&Role::Camera) {
            if let Some(rx) = health.get(&cam.device) {
                if !c.cameras.iter().any(|(n, _)| n == &cam.device) {
                    c.cameras.push((cam.device.clone(), rx.clone()));
                }
            }
        }
        if let Some(s) = l.spec.bindings.get(&Role::Scale) {
            scales
                .entry(s.device.clone())
                .or_default()
                .push(h.status.clone());
        }
    }
    c.scales = scales.into_iter().collect();
    c.uplinks = Some(kpis.clone());
    c.clocks = plan
        .platforms
        .iter()
        .filter(|p| p.enabled)
        .filter_map(|p| {
            let clock = health::HttpDateClock::new(&p.url).ok()?;
            Some((
                p.name.clone(),
                Arc::new(clock) as Arc<dyn health::ClockSource>,
            ))
        })
        .collect();
    c
}
