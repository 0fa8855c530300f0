//! The lane's `policy.decide`: registry lookup + the site's policy + the control measures and
//! lists in force, behind the lane engine's [`Decider`] seam.
//!
//! On a site that checks vehicles with a platform ([`SiteDecider::with_checker`]), the runtime
//! asks the platform when the plate is read ([`Decider::before_plate`]) and leaves the outcome
//! in a per-lane slot; `decide` then applies it:
//! - platform controls the vehicle → refused, `platform_control`, the platform's reason on the
//!   LED;
//! - platform allows → the local policy still decides (lists, measures, local minimums), on
//!   the registry's facts; the platform's stage/fuel fill only what the registry lacks;
//! - no usable answer → the local registry, and for an unknown vehicle the site's
//!   [`Fallback`].
//!
//! Which source decided goes on the pass ([`PassCheck`]).

use crate::lane::engine::{Decider, LaneSpec, PlateHook, Verdict};
use crate::ledger::{CheckSource, PassCheck};
use crate::policy::{ControlMeasure, DecisionInput, Mode, Policy, PolicyState};
use crate::registry::VehicleRegistry;
use crate::regulator::downlink::{CheckOutcome, Fallback, PlatformAnswer, VehicleChecker};
use crate::vehicle::{EmissionStage, Fuel, PlateColor, RegistryKind, VehicleFacts};
use chrono::{DateTime, Utc};
use ecogate_drivers::PlateRead;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The reason code of a vehicle the platform controls.
pub const PLATFORM_CONTROL: &str = "platform_control";
/// LED text when the platform controls a vehicle without saying why.
const PLATFORM_CONTROL_TEXT: &str = "平台管控 禁止通行";
/// A camera reads a waiting truck again and again: one platform answer serves the same plate
/// at the same lane this long.
const ANSWER_REUSE: Duration = Duration::from_secs(20);

pub struct SiteDecider {
    policy: Policy,
    state: Arc<RwLock<PolicyState>>,
    registry: Arc<dyn VehicleRegistry>,
    check: Option<Checking>,
}

/// The platform check: who to ask, the last outcome per lane, and the policies the fallback
/// decides unknown vehicles with.
struct Checking {
    checker: Arc<VehicleChecker>,
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    unknown_deny: Policy,
    unknown_allow: Policy,
}

#[derive(Clone)]
struct Slot {
    plate: String,
    color: PlateColor,
    outcome: CheckOutcome,
    at: Instant,
}

impl SiteDecider {
    pub fn new(policy: Policy, registry: Arc<dyn VehicleRegistry>) -> Self {
        let state = Arc::new(RwLock::new(PolicyState::from_config(&policy)));
        SiteDecider {
            policy,
            state,
            registry,
            check: None,
        }
    }

    /// Checks every vehicle with the checker's platforms before deciding.
    pub fn with_checker(mut self, checker: VehicleChecker) -> Self {
        let mut unknown_deny = self.policy.clone();
        unknown_deny.unknown = Mode::Deny;
        let mut unknown_allow = self.policy.clone();
        unknown_allow.unknown = Mode::AllowFlag;
        self.check = Some(Checking {
            checker: Arc::new(checker),
            slots: Arc::default(),
            unknown_deny,
            unknown_allow,
        });
        self
    }

    /// Whether vehicles are checked with a platform.
    pub fn checks(&self) -> bool {
        self.check.is_some()
    }

    /// The live measures and lists; platform downlinks and operators change them here.
    pub fn state(&self) -> Arc<RwLock<PolicyState>> {
        Arc::clone(&self.state)
    }

    pub fn add_measure(&self, m: ControlMeasure) {
        // A poisoned lock means a panic mid-update elsewhere; the lists are plain Vecs and
        // stay usable, and refusing to decide would stop every lane.
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .add_measure(m);
    }

    fn local(
        &self,
        policy: &Policy,
        lane: &LaneSpec,
        (plate, color): (&str, PlateColor),
        facts: Option<VehicleFacts>,
        now: DateTime<Utc>,
        check: Option<PassCheck>,
    ) -> Verdict {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let d = policy.decide(
            &DecisionInput {
                plate,
                color,
                facts: facts.as_ref(),
                gate: &lane.gate,
                direction: lane.direction,
                now,
            },
            &state,
        );
        Verdict {
            allow: d.allow,
            reason: d.reason.code().to_string(),
            text: d.text,
            review: d.review,
            facts,
            measure: d.measure.map(|m| m.name().to_string()),
            check,
        }
    }

    fn decide_checked(
        &self,
        c: &Checking,
        lane: &LaneSpec,
        plate: &str,
        color: PlateColor,
        now: DateTime<Utc>,
    ) -> Verdict {
        let outcome = c
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&lane.id)
            .filter(|s| s.plate == plate && s.color == color)
            .map(|s| {
                let o = s.outcome.clone();
                // A platform-issued serial numbers one pass: a second decision on the same
                // answer (a truck read again within the reuse window) gets none, and its
                // upload asks the platform for a serial of its own.
                if let CheckOutcome::Answered { answer, .. } = &mut s.outcome {
                    answer.serial = None;
                }
                o
            })
            // E.g. a machine that decides on a plate the camera did not push (never expected).
            .unwrap_or(CheckOutcome::Failed {
                error: "no platform answer for this read".into(),
            });
        let registered = self.registry.lookup(plate, color);
        match outcome {
            CheckOutcome::Answered { platform, answer } => {
                let check = Some(PassCheck {
                    source: CheckSource::Platform,
                    platform: Some(platform),
                    error: None,
                    serial: answer.serial.clone(),
                });
                let facts = merge(
                    registered,
                    &answer,
                    plate,
                    color,
                    !self.policy.require_registered,
                );
                if answer.control {
                    let state = self.state.read().unwrap_or_else(|e| e.into_inner());
                    let reason = answer.reason.trim();
                    return Verdict {
                        allow: false,
                        reason: PLATFORM_CONTROL.into(),
                        text: if reason.is_empty() {
                            PLATFORM_CONTROL_TEXT.into()
                        } else {
                            // The LED shows two short lines; a platform essay is cut, the
                            // whole reason is in the platform's own records.
                            reason.chars().take(32).collect()
                        },
                        review: false,
                        facts,
                        measure: self
                            .policy
                            .highest_level(&state, &lane.gate, now)
                            .map(|m| m.name().to_string()),
                        check,
                    };
                }
                self.local(&self.policy, lane, (plate, color), facts, now, check)
            }
            CheckOutcome::Failed { error } => match registered {
                Some(f) => self.local(
                    &self.policy,
                    lane,
                    (plate, color),
                    Some(f),
                    now,
                    Some(PassCheck {
                        source: CheckSource::FallbackRegistry,
                        platform: None,
                        error: Some(error),
                        serial: None,
                    }),
                ),
                None => {
                    let policy = match c.checker.fallback {
                        Fallback::RegistryThenPolicy => &self.policy,
                        Fallback::RegistryThenDeny => &c.unknown_deny,
                        Fallback::RegistryThenAllow => &c.unknown_allow,
                    };
                    self.local(
                        policy,
                        lane,
                        (plate, color),
                        None,
                        now,
                        Some(PassCheck {
                            source: CheckSource::FallbackDefault,
                            platform: None,
                            error: Some(error),
                            serial: None,
                        }),
                    )
                }
            },
        }
    }
}

/// The facts the local policy decides on when the platform answered. The registry wins where
/// it knows (its record was checked against the vehicle's papers and is what the ledger and
/// reports use); the platform fills an unknown stage, an `other` fuel, a missing type or use.
/// A vehicle missing from the registry takes the platform's facts only when the platform
/// names its type (a class is needed for the heavy-goods rules; guessing one would weaken
/// them) and the site does not require registration.
fn merge(
    registered: Option<VehicleFacts>,
    a: &PlatformAnswer,
    plate: &str,
    color: PlateColor,
    unregistered_ok: bool,
) -> Option<VehicleFacts> {
    match registered {
        Some(mut f) => {
            if let Some(s) = a.stage {
                if f.stage == EmissionStage::Unknown {
                    f.stage = s;
                } else if f.stage != s {
                    tracing::warn!(%plate, registry = %f.stage, platform = %s, "registry and platform disagree on the emission stage; the registry's is used");
                }
            }
            if let (Fuel::Other, Some(fuel)) = (f.fuel, a.fuel) {
                f.fuel = fuel;
            }
            if f.vehicle_type.trim().is_empty() {
                if let Some(t) = &a.vehicle_type {
                    f.vehicle_type = t.clone();
                }
            }
            if f.use_character.is_none() {
                f.use_character = a.use_character;
            }
            Some(f)
        }
        None => {
            let vehicle_type = a.vehicle_type.clone()?;
            let stage = a.stage?;
            unregistered_ok.then(|| VehicleFacts {
                plate: plate.to_string(),
                color,
                registry: RegistryKind::Transport,
                stage,
                fuel: a.fuel.unwrap_or(Fuel::Other),
                vehicle_type,
                use_character: a.use_character,
                obd_online: None,
            })
        }
    }
}

impl Decider for SiteDecider {
    fn decide(
        &self,
        lane: &LaneSpec,
        plate: &str,
        color: PlateColor,
        now: DateTime<Utc>,
    ) -> Verdict {
        match &self.check {
            Some(c) => self.decide_checked(c, lane, plate, color, now),
            None => {
                let facts = self.registry.lookup(plate, color);
                self.local(&self.policy, lane, (plate, color), facts, now, None)
            }
        }
    }

    fn measure_active(&self, gate: &str, now: DateTime<Utc>) -> bool {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.measures().iter().any(|m| m.is_active(gate, now))
    }

    fn before_plate(&self, lane: &LaneSpec, read: &PlateRead) -> Option<PlateHook> {
        let c = self.check.as_ref()?;
        {
            let slots = c.slots.lock().unwrap_or_else(|e| e.into_inner());
            if slots.get(&lane.id).is_some_and(|s| {
                s.plate == read.plate && s.color == read.color && s.at.elapsed() < ANSWER_REUSE
            }) {
                return None;
            }
        }
        let checker = Arc::clone(&c.checker);
        let slots = Arc::clone(&c.slots);
        let (lane_id, gate, direction) = (lane.id.clone(), lane.barrier_no.clone(), lane.direction);
        let (plate, color) = (read.plate.clone(), read.color);
        Some(Box::pin(async move {
            let outcome = checker.check(&gate, direction, &plate, color).await;
            slots.lock().unwrap_or_else(|e| e.into_inner()).insert(
                lane_id,
                Slot {
                    plate,
                    color,
                    outcome,
                    at: Instant::now(),
                },
            );
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lane::engine::Direction;
    use crate::registry::MemoryRegistry;

    fn lane() -> LaneSpec {
        LaneSpec {
            id: "1-in".into(),
            gate: "1".into(),
            barrier_no: "01".into(),
            direction: Direction::In,
            bindings: HashMap::new(),
            texts: Arc::default(),
            default_cargo: None,
            pulse_ms: 500,
        }
    }

    fn truck(plate: &str, stage: EmissionStage) -> VehicleFacts {
        VehicleFacts {
            plate: plate.into(),
            color: PlateColor::Yellow,
            registry: RegistryKind::Transport,
            stage,
            fuel: Fuel::Diesel,
            vehicle_type: "H11".into(),
            use_character: None,
            obd_online: None,
        }
    }

    fn decider(fleet: &[VehicleFacts], fallback: Fallback) -> SiteDecider {
        let reg = MemoryRegistry::new();
        for f in fleet {
            reg.insert(f.clone());
        }
        SiteDecider::new(Policy::default(), Arc::new(reg)).with_checker(VehicleChecker {
            targets: Vec::new(),
            fallback,
        })
    }

    fn answer(d: &SiteDecider, plate: &str, a: PlatformAnswer) {
        let c = d.check.as_ref().unwrap();
        c.slots.lock().unwrap().insert(
            "1-in".into(),
            Slot {
                plate: plate.into(),
                color: PlateColor::Yellow,
                outcome: CheckOutcome::Answered {
                    platform: "city".into(),
                    answer: a,
                },
                at: Instant::now(),
            },
        );
    }

    fn allowed(stage: Option<EmissionStage>, vehicle_type: Option<&str>) -> PlatformAnswer {
        PlatformAnswer {
            control: false,
            reason: String::new(),
            stage,
            fuel: Some(Fuel::Diesel),
            vehicle_type: vehicle_type.map(str::to_string),
            use_character: None,
            serial: None,
        }
    }

    #[test]
    fn the_platform_fills_an_unknown_stage_but_the_registry_wins_when_both_know() {
        let d = decider(
            &[
                truck("豫A00001", EmissionStage::Unknown),
                truck("豫A00002", EmissionStage::China(4)),
            ],
            Fallback::RegistryThenPolicy,
        );
        let now = Utc::now();
        // Stage X would be refused by default (`stage_x = "deny"`); the platform says 国六.
        answer(&d, "豫A00001", allowed(Some(EmissionStage::China(6)), None));
        let v = d.decide(&lane(), "豫A00001", PlateColor::Yellow, now);
        assert!(v.allow, "{v:?}");
        assert_eq!(v.facts.unwrap().stage, EmissionStage::China(6));
        assert_eq!(v.check.unwrap().source, CheckSource::Platform);
        // The registry's 国四 stands against the platform's 国六: refused by the normal-day
        // heavy-goods minimum (国五).
        answer(&d, "豫A00002", allowed(Some(EmissionStage::China(6)), None));
        let v = d.decide(&lane(), "豫A00002", PlateColor::Yellow, now);
        assert!(!v.allow);
        assert_eq!(v.reason, "normal_min_stage");
    }

    #[test]
    fn an_unregistered_vehicle_takes_platform_facts_only_with_a_vehicle_type() {
        let d = decider(&[], Fallback::RegistryThenPolicy);
        let now = Utc::now();
        answer(&d, "豫A00003", allowed(Some(EmissionStage::China(4)), None));
        let v = d.decide(&lane(), "豫A00003", PlateColor::Yellow, now);
        assert!(v.facts.is_none(), "no type, no class: stays unknown");
        assert_eq!(v.reason, "unknown_vehicle");
        answer(
            &d,
            "豫A00003",
            allowed(Some(EmissionStage::China(4)), Some("H11")),
        );
        let v = d.decide(&lane(), "豫A00003", PlateColor::Yellow, now);
        assert_eq!(
            v.facts.as_ref().map(|f| f.stage),
            Some(EmissionStage::China(4))
        );
        // A heavy 国四 diesel truck under the normal-day minimum: refused on the platform's facts.
        assert_eq!(v.reason, "normal_min_stage");
    }

    #[test]
    fn a_platform_serial_numbers_one_pass_only() {
        let d = decider(
            &[truck("豫A00005", EmissionStage::China(6))],
            Fallback::RegistryThenPolicy,
        );
        let now = Utc::now();
        answer(
            &d,
            "豫A00005",
            PlatformAnswer {
                serial: Some("KF1".into()),
                ..allowed(None, None)
            },
        );
        let v = d.decide(&lane(), "豫A00005", PlateColor::Yellow, now);
        assert_eq!(v.check.unwrap().serial.as_deref(), Some("KF1"));
        // The same answer decides a second read; its pass must not reuse the serial.
        let v = d.decide(&lane(), "豫A00005", PlateColor::Yellow, now);
        let c = v.check.unwrap();
        assert_eq!(c.source, CheckSource::Platform);
        assert_eq!(c.serial, None);
    }

    #[test]
    fn a_read_without_an_answer_falls_back_and_says_why() {
        let d = decider(&[], Fallback::RegistryThenDeny);
        let v = d.decide(&lane(), "豫A00004", PlateColor::Yellow, Utc::now());
        assert!(!v.allow);
        assert_eq!(v.reason, "unknown_vehicle");
        let c = v.check.unwrap();
        assert_eq!(c.source, CheckSource::FallbackDefault);
        assert!(c.error.unwrap().contains("no platform answer"));
    }
}
