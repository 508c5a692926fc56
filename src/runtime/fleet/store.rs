//! The fleet's records in etcd: leases, one read of everything at one revision, and the
//! transaction that writes this instance's records only if nobody else wrote since that read.
//!
//! Keys under the fleet's prefix:
//! ```text
//! <prefix>/members/<instance>  MemberRecord (JSON), under the instance's lease (`lease`)
//! <prefix>/floors/<instance>   FloorRecord (JSON), under its longer lease (`fallback_lease`)
//! <prefix>/version             bumped by every write: the transaction's compare-and-swap
//! ```
//! A lease that expires deletes its keys, which only ever frees slots, so expiries need not bump
//! the version; every write that could take slots does.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};

use super::shares::{FloorRecord, MemberRecord, View};

/// Why an etcd call did not do its job; every one is retried on the next round.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the lease is gone (expired or revoked)")]
    LeaseGone,
}

/// One connection to the etcd cluster and the key names of this fleet.
pub struct Store {
    client: Client,
    prefix: String,
    /// Bound on every call: a call that hangs would stall the partition timers.
    timeout: Duration,
}

/// [`View`] plus what a transaction compares against.
pub struct Snapshot {
    pub view: View,
    /// The version key's modification revision at the read (0: never written).
    pub version: i64,
    /// Leases of this instance's own records, when they exist (an upgrade takes them over).
    pub my_leases: (Option<i64>, Option<i64>),
}

impl Store {
    pub async fn connect(
        endpoints: &[&str],
        prefix: String,
        timeout: Duration,
    ) -> Result<Store, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let client = bounded(timeout, Client::connect(endpoints, Some(options))).await?;
        Ok(Store {
            client,
            prefix,
            timeout,
        })
    }

    fn key(&self, kind: &str, instance: &str) -> String {
        format!("{}/{kind}/{instance}", self.prefix)
    }

    /// A new lease of `ttl` (whole seconds).
    pub async fn grant(&mut self, ttl: Duration) -> Result<i64, StoreError> {
        let secs = ttl.as_secs().max(1) as i64;
        let granted = bounded(self.timeout, self.client.lease_grant(secs, None)).await?;
        Ok(granted.id())
    }

    /// Renews `lease` once; [`StoreError::LeaseGone`] if etcd no longer has it.
    pub async fn renew(&mut self, lease: i64) -> Result<(), StoreError> {
        match bounded(self.timeout, self.client.lease_keep_alive(lease)).await {
            Ok(_) => Ok(()),
            // The client reports a renewal answered with TTL 0 this way.
            Err(StoreError::Etcd(etcd_client::Error::LeaseKeepAliveError(message)))
                if message.contains("not found") =>
            {
                Err(StoreError::LeaseGone)
            }
            Err(error) => Err(error),
        }
    }

    /// Ends `lease` now, deleting the records under it.
    pub async fn revoke(&mut self, lease: i64) -> Result<(), StoreError> {
        bounded(self.timeout, self.client.lease_revoke(lease)).await?;
        Ok(())
    }

    /// A stream that yields whenever any record of the fleet changes (a write, an expiry), so a
    /// slot given up is taken at once rather than at the next round.
    pub async fn watch(&mut self) -> Result<WatchStream, StoreError> {
        let options = WatchOptions::new().with_prefix();
        let prefix = format!("{}/", self.prefix);
        bounded(self.timeout, self.client.watch(prefix, Some(options))).await
    }

    /// Every record of the fleet at one revision. Records that do not parse are ignored with a
    /// warning (a different build sharing the prefix by mistake).
    pub async fn read(&mut self, me: &str) -> Result<Snapshot, StoreError> {
        let prefix = format!("{}/", self.prefix);
        let options = GetOptions::new().with_prefix();
        let response =
            bounded(self.timeout, self.client.get(prefix.clone(), Some(options))).await?;
        let mut snapshot = Snapshot {
            view: View::default(),
            version: 0,
            my_leases: (None, None),
        };
        for kv in response.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            let parsed =
                match rest.split_once('/') {
                    Some(("members", name)) => serde_json::from_slice::<MemberRecord>(kv.value())
                        .map(|record| {
                            if name == me {
                                snapshot.my_leases.0 = Some(kv.lease());
                            }
                            snapshot.view.members.insert(name.to_owned(), record);
                        }),
                    Some(("floors", name)) => serde_json::from_slice::<FloorRecord>(kv.value())
                        .map(|record| {
                            if name == me {
                                snapshot.my_leases.1 = Some(kv.lease());
                            }
                            snapshot.view.floors.insert(name.to_owned(), record);
                        }),
                    None if rest == "version" => {
                        snapshot.version = kv.mod_revision();
                        Ok(())
                    }
                    _ => Ok(()),
                };
            if let Err(error) = parsed {
                tracing::warn!(key, %error, "fleet: unreadable record ignored");
            }
        }
        Ok(snapshot)
    }

    /// Writes this instance's records if nobody wrote since `snapshot` was read; `Ok(false)`
    /// if someone did (read again and recompute).
    pub async fn write(
        &mut self,
        me: &str,
        version: i64,
        member: (&MemberRecord, i64),
        floor: (&FloorRecord, i64),
    ) -> Result<bool, StoreError> {
        let version_key = format!("{}/version", self.prefix);
        let member_value = serde_json::to_vec(member.0).unwrap_or_default();
        let floor_value = serde_json::to_vec(floor.0).unwrap_or_default();
        let txn = Txn::new()
            .when([Compare::mod_revision(
                version_key.clone(),
                CompareOp::Equal,
                version,
            )])
            .and_then([
                TxnOp::put(
                    self.key("members", me),
                    member_value,
                    Some(PutOptions::new().with_lease(member.1)),
                ),
                TxnOp::put(
                    self.key("floors", me),
                    floor_value,
                    Some(PutOptions::new().with_lease(floor.1)),
                ),
                TxnOp::put(version_key, "", None),
            ]);
        match bounded(self.timeout, self.client.txn(txn)).await {
            Ok(response) => Ok(response.succeeded()),
            // A put under an expired lease fails the whole transaction.
            Err(StoreError::Etcd(error)) if error.to_string().contains("lease not found") => {
                Err(StoreError::LeaseGone)
            }
            Err(error) => Err(error),
        }
    }
}

async fn bounded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}
