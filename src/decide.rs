//! The lane's `policy.decide`: registry lookup + the site's policy + the control measures and
//! lists in force, behind the lane engine's [`Decider`] seam.

use crate::lane::engine::{Decider, LaneSpec, Verdict};
use crate::policy::{ControlMeasure, DecisionInput, Policy, PolicyState};
use crate::registry::VehicleRegistry;
use crate::vehicle::PlateColor;
use chrono::{DateTime, Utc};
use std::sync::{Arc, RwLock};

pub struct SiteDecider {
    policy: Policy,
    state: Arc<RwLock<PolicyState>>,
    registry: Arc<dyn VehicleRegistry>,
}

impl SiteDecider {
    pub fn new(policy: Policy, registry: Arc<dyn VehicleRegistry>) -> Self {
        let state = Arc::new(RwLock::new(PolicyState::from_config(&policy)));
        SiteDecider {
            policy,
            state,
            registry,
        }
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
}

impl Decider for SiteDecider {
    fn decide(
        &self,
        lane: &LaneSpec,
        plate: &str,
        color: PlateColor,
        now: DateTime<Utc>,
    ) -> Verdict {
        let facts = self.registry.lookup(plate, color);
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let d = self.policy.decide(
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
        }
    }

    fn measure_active(&self, gate: &str, now: DateTime<Utc>) -> bool {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.measures().iter().any(|m| m.is_active(gate, now))
    }
}
