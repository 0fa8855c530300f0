//! `ledger.record` and friends: lane records become ledger events, appended durably (the
//! append resolves only after COMMIT and after the photos are on disk).

use crate::lane::engine::{self, Direction, Record};
use crate::ledger::events::{
    BarrierException, BarrierMode, Decision, EventBody, ManualRelease, PassAttempt, Weighing,
};
use crate::ledger::{Ledger, LedgerError};
use crate::runtime::RecordSink;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use ecogate_drivers::ImageKind;

fn mode(m: engine::BarrierMode) -> BarrierMode {
    match m {
        engine::BarrierMode::Auto => BarrierMode::Auto,
        engine::BarrierMode::Manual => BarrierMode::Manual,
        engine::BarrierMode::Remote => BarrierMode::Remote,
    }
}

/// The ledger event and photos for one lane record.
pub fn to_event(r: &Record) -> (EventBody, Vec<Bytes>, DateTime<Utc>) {
    match r {
        Record::Pass(p) => {
            let photos: Vec<Bytes> = p.images.iter().map(|i| i.jpeg.clone()).collect();
            let kinds: Vec<String> = p
                .images
                .iter()
                .map(|i| match i.kind {
                    ImageKind::Scene => "scene".to_string(),
                    ImageKind::Plate => "plate".to_string(),
                })
                .collect();
            if let Some(rel) = &p.release {
                let body = EventBody::ManualRelease(ManualRelease {
                    lane: p.lane.clone(),
                    gate: Some(p.gate.clone()),
                    direction: p.direction,
                    plate: (!p.plate.is_empty()).then(|| p.plate.clone()),
                    color: (!p.plate.is_empty()).then_some(p.color),
                    mode: mode(p.mode),
                    operator: rel.operator.clone(),
                    role: rel.role.clone(),
                    reason: rel.reason.clone(),
                    approval: rel.approval.clone(),
                    request: rel.request.clone(),
                    photo_kinds: kinds,
                });
                return (body, photos, p.at);
            }
            let v = p.verdict.as_ref();
            let facts = v.and_then(|v| v.facts.as_ref());
            let allow = v.is_some_and(|v| v.allow);
            let body = EventBody::PassAttempt(PassAttempt {
                lane: p.lane.clone(),
                gate: Some(p.gate.clone()),
                direction: p.direction,
                plate: p.plate.clone(),
                color: p.color,
                decision: if allow {
                    Decision::Allow
                } else {
                    Decision::Deny
                },
                reason: v
                    .map(|v| v.reason.clone())
                    .unwrap_or_else(|| "no_decision".into()),
                reason_text: v.map(|v| v.text.clone()).unwrap_or_default(),
                barrier: mode(p.mode),
                // Recorded before actuation: an allowed vehicle's barrier is commanded next.
                opened: allow,
                stage: facts.map(|f| f.stage),
                fuel: facts.map(|f| f.fuel),
                registry: facts.map(|f| f.registry),
                photo_kinds: kinds,
                read_id: p.camera_id.clone(),
                check: v.and_then(|v| v.check.clone()),
            });
            (body, photos, p.at)
        }
        Record::Weighing(w) => {
            // `auto`: a steel/coking/cement plant's entry weighing is mostly a loaded raw-material
            // truck (gross) and its exit weighing the empty one (tare). Sites shipping product
            // say ledger.weight(gross) on the exit lane instead.
            let gross_slot = match w.kind {
                "gross" => true,
                "tare" => false,
                _ => w.direction == Direction::In,
            };
            let body = EventBody::Weighing(Weighing {
                lane: w.lane.clone(),
                scale: w.scale.clone(),
                plate: w.plate.clone(),
                color: w.color,
                gross: gross_slot.then_some(w.mass),
                tare: (!gross_slot).then_some(w.mass),
                net: None,
                cargo: w.cargo.clone(),
                direction: Some(w.direction),
                pass_ref: None,
            });
            (body, Vec::new(), w.at)
        }
        Record::Exception(e) => {
            let body = EventBody::BarrierException(BarrierException {
                lane: e.lane.clone(),
                gate: Some(e.gate.clone()),
                mode: if e.code == "barrier_opened_without_command" {
                    BarrierMode::Manual
                } else {
                    BarrierMode::Auto
                },
                note: match &e.plate {
                    Some(p) if !p.is_empty() => format!("{} ({p})", e.code),
                    _ => e.code.clone(),
                },
                photo_kinds: Vec::new(),
            });
            (body, Vec::new(), e.at)
        }
    }
}

/// Appends a lane record; returns its sequence number once durable.
pub async fn record_lane(ledger: &Ledger, r: &Record) -> Result<u64, LedgerError> {
    let (body, photos, at) = to_event(r);
    let receipt = ledger.append(body, photos, at).await?;
    Ok(receipt.seq as u64)
}

impl RecordSink for Ledger {
    async fn record(&self, r: &Record) -> Result<u64, String> {
        record_lane(self, r).await.map_err(|e| e.to_string())
    }
}
