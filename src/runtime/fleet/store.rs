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
//!
//! Nobody polls: each instance reads the prefix once, then keeps that [`Snapshot`] current with
//! one watch from the next revision ([`Store::apply`]), and reads again only when the watch
//! breaks or its revision was compacted away. At 100 instances in front of 1,000 backends a
//! read is 100 records of a few kB each; a read per instance per second would be 100 reads of
//! that per second for a fleet at rest, the watch is nothing at rest.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, WatchOptions, WatchResponse, WatchStream,
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
#[derive(Clone, Default)]
pub struct Snapshot {
    pub view: View,
    /// The version key's modification revision at the read (0: never written).
    pub version: i64,
    /// Leases of this instance's own records, when they exist (an upgrade takes them over).
    pub my_leases: (Option<i64>, Option<i64>),
    /// The etcd revision the read saw: a watch from the next one keeps the snapshot current.
    pub revision: i64,
    /// The revision of this instance's last write noted here (its member record and the
    /// version key), and of the last one that wrote its floor: see [`Snapshot::take`].
    own_write: i64,
    own_floor_write: i64,
}

/// One key's change as etcd reports it: a watch event, or a key found by a read.
pub struct Change<'a> {
    pub key: &'a str,
    /// The new value; `None`: the key is gone (revoked, or its lease expired).
    pub value: Option<&'a [u8]>,
    pub lease: i64,
    /// The revision of the change (a put's mod revision, or the delete's).
    pub revision: i64,
}

impl Snapshot {
    /// Takes in this instance's own write at `revision` at once: until its watch event arrives
    /// the snapshot would otherwise show the shares from before it, and "what etcd holds is the
    /// truth" would undo them. Nobody else wrote in between (the transaction compared the
    /// version), so only expiries can be missing, and the watch still brings them.
    pub fn note_own_write(
        &mut self,
        me: &str,
        revision: i64,
        member: (MemberRecord, i64),
        floor: Option<(FloorRecord, i64)>,
    ) {
        self.version = revision;
        self.own_write = revision;
        self.view.members.insert(me.to_owned(), member.0);
        self.my_leases.0 = Some(member.1);
        if let Some((floor, lease)) = floor {
            self.own_floor_write = revision;
            self.view.floors.insert(me.to_owned(), floor);
            self.my_leases.1 = Some(lease);
        }
    }

    /// Takes in one change of a key under `prefix` (`<prefix>/members/<name>` and so on).
    ///
    /// A change of this instance's own records, or of the version key, at or before its own
    /// write noted here is that write's echo or an earlier one: the watch delivers it after the
    /// write's answer, and the snapshot already holds what came after. Taken in, it rolled the
    /// shares and the version back to an earlier write's: the next round then believed etcd
    /// held those old shares, lowered the pools to them, and wrote a release nobody wanted
    /// (or none at all, its compare-and-swap against an old version bound to fail). Other
    /// instances' records change only through the watch, in order: each change is news.
    pub fn take(&mut self, prefix: &str, me: &str, change: Change<'_>) {
        let Some(rest) = change
            .key
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
        else {
            return;
        };
        let record = rest.split_once('/');
        let noted = match record {
            Some(("members", name)) if name == me => self.own_write,
            Some(("floors", name)) if name == me => self.own_floor_write,
            None if rest == "version" => self.own_write,
            _ => 0,
        };
        if change.revision <= noted {
            return;
        }
        let view = &mut self.view;
        let parsed = match (record, change.value) {
            (Some(("members", name)), None) => {
                view.members.remove(name);
                if name == me {
                    self.my_leases.0 = None;
                }
                Ok(())
            }
            (Some(("floors", name)), None) => {
                view.floors.remove(name);
                if name == me {
                    self.my_leases.1 = None;
                }
                Ok(())
            }
            (Some(("members", name)), Some(value)) => serde_json::from_slice::<MemberRecord>(value)
                .map(|record| {
                    if name == me {
                        self.my_leases.0 = Some(change.lease);
                    }
                    view.members.insert(name.to_owned(), record);
                }),
            (Some(("floors", name)), Some(value)) => serde_json::from_slice::<FloorRecord>(value)
                .map(|record| {
                    if name == me {
                        self.my_leases.1 = Some(change.lease);
                    }
                    view.floors.insert(name.to_owned(), record);
                }),
            (None, Some(_)) if rest == "version" => {
                self.version = change.revision;
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(error) = parsed {
            tracing::warn!(key = change.key, %error, "fleet: unreadable record ignored");
        }
    }
}

/// What a watch response did to a [`Snapshot`].
pub enum Applied {
    /// Its events (if any) are in the snapshot.
    Current,
    /// The watch ended (compaction, cancel): read again and watch anew.
    Lost,
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

    /// The watch that keeps a snapshot read at `revision` current: every change of the fleet's
    /// records after it, in order (writes and lease expiries alike).
    pub async fn watch_from(&mut self, revision: i64) -> Result<WatchStream, StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let prefix = format!("{}/", self.prefix);
        bounded(self.timeout, self.client.watch(prefix, Some(options))).await
    }

    /// Every record of the fleet at one revision. Records that do not parse are ignored with a
    /// warning (a different build sharing the prefix by mistake).
    pub async fn read(&mut self, me: &str) -> Result<Snapshot, StoreError> {
        let prefix = format!("{}/", self.prefix);
        let options = GetOptions::new().with_prefix();
        let response = bounded(self.timeout, self.client.get(prefix, Some(options))).await?;
        let mut snapshot = Snapshot {
            revision: response.header().map_or(0, |header| header.revision()),
            ..Snapshot::default()
        };
        for kv in response.kvs() {
            if let Some(change) = change(kv, EventType::Put) {
                snapshot.take(&self.prefix, me, change);
            }
        }
        Ok(snapshot)
    }

    /// Brings `snapshot` up to one watch response. etcd sends all events of a revision in one
    /// response, so the snapshot is never half a transaction.
    pub fn apply(&self, snapshot: &mut Snapshot, me: &str, response: &WatchResponse) -> Applied {
        if response.canceled() || response.compact_revision() > 0 {
            return Applied::Lost;
        }
        for event in response.events() {
            if let Some(kv) = event.kv() {
                if let Some(change) = change(kv, event.event_type()) {
                    snapshot.take(&self.prefix, me, change);
                }
                snapshot.revision = snapshot.revision.max(kv.mod_revision());
            }
        }
        Applied::Current
    }

    /// Writes this instance's records if nobody wrote since `version` (the snapshot's); the floor
    /// only when given (it changes far less often than the shares). `Ok(Some(revision))` of the
    /// write, `Ok(None)` if someone wrote first (the watch brings their write; recompute then).
    pub async fn write(
        &mut self,
        me: &str,
        version: i64,
        member: (&MemberRecord, i64),
        floor: Option<(&FloorRecord, i64)>,
    ) -> Result<Option<i64>, StoreError> {
        let version_key = format!("{}/version", self.prefix);
        let member_value = serde_json::to_vec(member.0).unwrap_or_default();
        let mut puts = vec![TxnOp::put(
            self.key("members", me),
            member_value,
            Some(PutOptions::new().with_lease(member.1)),
        )];
        if let Some((floor, lease)) = floor {
            puts.push(TxnOp::put(
                self.key("floors", me),
                serde_json::to_vec(floor).unwrap_or_default(),
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        puts.push(TxnOp::put(version_key.clone(), "", None));
        let txn = Txn::new()
            .when([Compare::mod_revision(
                version_key,
                CompareOp::Equal,
                version,
            )])
            .and_then(puts);
        match bounded(self.timeout, self.client.txn(txn)).await {
            Ok(response) => Ok(response
                .succeeded()
                .then(|| response.header().map_or(0, |header| header.revision()))),
            // A put under an expired lease fails the whole transaction.
            Err(StoreError::Etcd(error)) if error.to_string().contains("lease not found") => {
                Err(StoreError::LeaseGone)
            }
            Err(error) => Err(error),
        }
    }
}

/// A key's change as [`Snapshot::take`] takes it; `None` for a key that is not UTF-8 (not ours).
fn change(kv: &KeyValue, event: EventType) -> Option<Change<'_>> {
    Some(Change {
        key: kv.key_str().ok()?,
        value: matches!(event, EventType::Put).then(|| kv.value()),
        lease: kv.lease(),
        revision: kv.mod_revision(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "/fleet";

    fn member(shares: &[usize]) -> MemberRecord {
        MemberRecord {
            shares: shares.to_vec(),
            demand: vec![0; shares.len()],
            owner: 7,
        }
    }

    /// A put of `record` to `key`, as the watch reports it.
    fn put(snapshot: &mut Snapshot, key: &str, record: &MemberRecord, revision: i64) {
        let value = serde_json::to_vec(record).unwrap();
        let key = format!("{PREFIX}/{key}");
        let change = Change {
            key: &key,
            value: Some(&value),
            lease: 1,
            revision,
        };
        snapshot.take(PREFIX, "a", change);
    }

    /// The version key's put that every transaction makes.
    fn bump(snapshot: &mut Snapshot, revision: i64) {
        let key = format!("{PREFIX}/version");
        let change = Change {
            key: &key,
            value: Some(b""),
            lease: 0,
            revision,
        };
        snapshot.take(PREFIX, "a", change);
    }

    fn delete(snapshot: &mut Snapshot, key: &str, revision: i64) {
        let key = format!("{PREFIX}/{key}");
        let change = Change {
            key: &key,
            value: None,
            lease: 0,
            revision,
        };
        snapshot.take(PREFIX, "a", change);
    }

    fn shares_of(snapshot: &Snapshot, name: &str) -> Option<Vec<usize>> {
        snapshot
            .view
            .members
            .get(name)
            .map(|record| record.shares.clone())
    }

    /// The order seen in a failing run of tests/fleet.rs: "a" registers (revision 2), takes
    /// all of n (3), and only then does the watch deliver the registration's events.
    #[test]
    fn the_echo_of_an_earlier_own_write_does_not_roll_the_snapshot_back() {
        let mut snapshot = Snapshot::default();
        snapshot.note_own_write("a", 2, (member(&[0, 0]), 1), None);
        snapshot.note_own_write("a", 3, (member(&[6, 6]), 1), None);
        put(&mut snapshot, "members/a", &member(&[0, 0]), 2);
        bump(&mut snapshot, 2);
        assert_eq!(shares_of(&snapshot, "a"), Some(vec![6, 6]));
        assert_eq!(
            snapshot.version, 3,
            "the transaction compares against the newest"
        );
        put(&mut snapshot, "members/a", &member(&[6, 6]), 3);
        bump(&mut snapshot, 3);
        assert_eq!(shares_of(&snapshot, "a"), Some(vec![6, 6]));
        // Another instance's write, after: taken in as always.
        put(&mut snapshot, "members/b", &member(&[0, 0]), 4);
        bump(&mut snapshot, 4);
        assert_eq!(shares_of(&snapshot, "b"), Some(vec![0, 0]));
        assert_eq!(snapshot.version, 4);
    }

    #[test]
    fn an_old_delete_of_an_own_record_does_not_remove_the_newer_one() {
        let mut snapshot = Snapshot::default();
        put(&mut snapshot, "members/b", &member(&[1, 1]), 2);
        // "a" registers again after its lease expired (revision 4), and writes (5): the
        // expiry's delete arrives after. Another instance's expiry at 4 is news all the same.
        snapshot.note_own_write("a", 5, (member(&[1, 1]), 9), None);
        delete(&mut snapshot, "members/a", 4);
        delete(&mut snapshot, "members/b", 4);
        assert_eq!(shares_of(&snapshot, "a"), Some(vec![1, 1]));
        assert_eq!(snapshot.my_leases.0, Some(9));
        assert_eq!(shares_of(&snapshot, "b"), None);
        // A later delete of its own record (its lease gone) is news.
        delete(&mut snapshot, "members/a", 6);
        assert_eq!(shares_of(&snapshot, "a"), None);
        assert_eq!(snapshot.my_leases.0, None);
    }
}
