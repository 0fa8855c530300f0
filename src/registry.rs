//! Vehicle registry lookup. The policy engine asks "what do we know about this plate?"; the
//! answer comes from the plant's own registries (一车一档), kept by the ledger in SQLite, or
//! from memory in tests and the demo.

use crate::vehicle::{PlateColor, VehicleFacts};
use std::collections::HashMap;
use std::sync::RwLock;

pub trait VehicleRegistry: Send + Sync {
    /// The registered facts for a plate and colour, if the vehicle is registered.
    fn lookup(&self, plate: &str, color: PlateColor) -> Option<VehicleFacts>;
}

/// An in-memory registry.
#[derive(Default)]
pub struct MemoryRegistry {
    vehicles: RwLock<HashMap<(String, PlateColor), VehicleFacts>>,
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&self, facts: VehicleFacts) {
        let key = (facts.plate.clone(), facts.color);
        // A poisoned lock only means another thread panicked mid-insert; the map itself is
        // still consistent (HashMap insert is not observable half-done), so keep serving.
        let mut map = self.vehicles.write().unwrap_or_else(|e| e.into_inner());
        map.insert(key, facts);
    }

    pub fn len(&self) -> usize {
        self.vehicles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl VehicleRegistry for MemoryRegistry {
    fn lookup(&self, plate: &str, color: PlateColor) -> Option<VehicleFacts> {
        let map = self.vehicles.read().unwrap_or_else(|e| e.into_inner());
        map.get(&(plate.to_string(), color)).cloned()
    }
}
