//! The fleet coordinator's state for `/status`, `/status.json` and `/metrics`. The coordinator
//! sits above the admin listener (it steers the pools, as an upgrade does), so it hands its
//! state down through a reader installed here rather than being imported.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// This instance's place in the fleet.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetReport {
    /// `--instance`.
    pub instance: String,
    /// The etcd key prefix of the fleet.
    pub prefix: String,
    /// `registered`, `unregistered` (etcd not reached yet, or leases lost), `fallback` (etcd
    /// away: holding the fallback share), `stopped` (etcd away too long: holding nothing),
    /// `handed_over` (an upgrade's successor owns the shares).
    pub state: String,
    /// Live instances at the last read of the records, this one included.
    pub instances_seen: usize,
    /// When etcd last answered, in Unix seconds.
    pub last_etcd_contact_unix: Option<f64>,
    pub backends: Vec<FleetBackendReport>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetBackendReport {
    pub address: String,
    /// The fleet-wide `n`.
    pub pool_size: usize,
    /// This instance's share as recorded in etcd.
    pub share: usize,
    /// What the pool is held at now (below the share while giving slots up or cut off).
    pub limit: usize,
    /// Slots recorded across the fleet (floors of lost instances included); never above `n`.
    pub fleet_total: usize,
}

/// Reads the coordinator's current [`FleetReport`].
pub type FleetReader = Box<dyn Fn() -> FleetReport + Send + Sync>;

static FLEET: OnceLock<FleetReader> = OnceLock::new();

/// Installs the coordinator's reader; only the first call counts (one fleet per process).
pub fn report_fleet(reader: FleetReader) {
    let _ = FLEET.set(reader);
}

/// The fleet's state now, when this process is part of one.
pub fn fleet() -> Option<FleetReport> {
    FLEET.get().map(|read| read())
}
