//! Rules across the cluster: a key's count is the cluster's, not one
//! instance's share.
//!
//! One instance, the leader (elected through ZooKeeper, see
//! [`super::registry`]), evaluates the rules at every slide on the
//! cluster's counts: for each running count, every key whose count over
//! the cluster can reach the rule's floor (each instance sends the keys it
//! counted at least `floor / instances` times), then the exact counts of
//! those keys and of the keys already pending or firing. It evaluates only
//! on a complete cluster (every partition counted up to date, every part
//! from one view): a partial count never resolves or fires anything. It
//! alone delivers alerts, and after each slide it writes the rules' state
//! to `/ipstats/<group>/rules`, where a successor takes it up: keys already
//! firing go on firing without a second transition.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zookeeper_client as zk;

use super::fanout::{DEADLINE, Fanout};
use super::part::read_key;
use super::registry::{Leader, RegistryOptions, rules_path};
use crate::metrics::Metrics;
use crate::query::Grouping;
use crate::rules::outbox::Outbox;
use crate::rules::{Evaluator, Key, Rules, SavedAlerts};
use crate::vocab::{IpKey, Network, Subject};

/// What the rules task needs.
pub struct Task {
    pub fanout: Arc<Fanout>,
    pub rules: Arc<Rules>,
    pub batch: Duration,
    pub slide: Duration,
    pub outbox: Option<Outbox>,
    pub metrics: Metrics,
    pub leader: Leader,
    pub zookeeper: RegistryOptions,
}

/// The grouping a key kind is counted by, and whether a key is of its family.
fn grouping_of(key: Key) -> Option<Grouping> {
    match key {
        Key::Ip | Key::Asn | Key::Country => None,
        Key::V4(bits) => Some(Grouping {
            prefix4: bits,
            prefix6: 128,
        }),
        Key::V6(bits) => Some(Grouping {
            prefix4: 32,
            prefix6: bits,
        }),
    }
}

fn of_kind(key: Key, network: Network) -> bool {
    match key {
        Key::Ip => true,
        Key::V4(_) => network.is_v4(),
        Key::V6(_) => !network.is_v4(),
        Key::Asn | Key::Country => false,
    }
}

/// A key as a part names it: an address, a network in CIDR form, an AS
/// (`AS16509`) or a country.
fn key_text(key: Key, subject: Subject) -> String {
    match (key, subject) {
        (Key::Ip, Subject::Net(network)) => IpKey::from_bits(network.to_parts().0).to_string(),
        _ => subject.to_string(),
    }
}

impl Task {
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut evaluator: Option<Evaluator> = None;
        let mut store: Option<zk::Client> = None;
        let mut saved_last: Option<SavedAlerts> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.slide) => {}
            }
            if !self.leader.load().me {
                if evaluator.take().is_some() {
                    info!("no longer the rules leader: another instance evaluates the rules");
                    self.fanout.alerts.store(Arc::default());
                }
                continue;
            }
            if store.is_none() {
                store = self.connect().await;
            }
            let Some(client) = store.as_ref() else {
                continue;
            };
            if evaluator.is_none() {
                let saved = match self.read_saved(client).await {
                    Ok(saved) => saved,
                    Err(error) => {
                        warn!(%error, "reading the rules' state from ZooKeeper failed; retrying");
                        store = None;
                        continue;
                    }
                };
                info!(
                    restored = saved.is_some(),
                    "rules leader: evaluating the rules on the cluster's counts"
                );
                saved_last.clone_from(&saved);
                evaluator = Some(
                    Evaluator::new(self.rules.clone(), self.batch, self.metrics.clone())
                        .with_outbox(self.outbox.clone())
                        .with_saved(saved.as_ref()),
                );
            }
            let Some(ev) = evaluator.as_mut() else {
                continue;
            };
            let Some((view, transitions)) = self.slide(ev).await else {
                continue;
            };
            self.fanout.alerts.store(view);
            // The state first, where a successor finds it, then the alerts:
            // a leader killed in between has sent nothing its successor
            // would send again.
            let saved = ev.save();
            if saved_last.as_ref() != Some(&saved) {
                match self.write_saved(client, &saved).await {
                    Ok(()) => saved_last = Some(saved),
                    Err(error) => {
                        warn!(%error, "writing the rules' state to ZooKeeper failed; its transitions wait for the next slide");
                        store = None;
                        // Evaluated again from the state saved last.
                        evaluator = None;
                        continue;
                    }
                }
            }
            ev.deliver(transitions);
        }
    }

    /// One slide on the cluster's counts; `None` when the cluster is not
    /// complete or an instance did not answer every round.
    async fn slide(
        &self,
        ev: &mut Evaluator,
    ) -> Option<(Arc<crate::rules::AlertsView>, Vec<crate::rules::Transition>)> {
        let until = Instant::now() + DEADLINE;
        let settled = self.fanout.settle().await?;
        let mut counted = Vec::new();
        for wanted in ev.wanted() {
            let length = self.batch * u32::try_from(wanted.panes).unwrap_or(u32::MAX);
            if let Some(kind) = wanted.key.owner_kind() {
                // Owners are few: every instance's, added up.
                let owned = self
                    .fanout
                    .owners(&settled.ending(length), kind, usize::MAX)
                    .await;
                if !owned.cluster.complete {
                    return None;
                }
                let counts = owned
                    .top
                    .iter()
                    .map(|&(key, count, _)| (kind.subject(key), count))
                    .collect();
                counted.push((owned.total_requests, counts));
                continue;
            }
            let keys = wanted
                .keys
                .iter()
                .map(|k| key_text(wanted.key, *k))
                .collect();
            let above = self
                .fanout
                .above(
                    &settled.ending(length),
                    grouping_of(wanted.key),
                    wanted.floor,
                    keys,
                    until,
                )
                .await?;
            let counts: FxHashMap<Subject, u64> = above
                .counts
                .into_iter()
                .filter_map(|(k, c)| read_key(&k).map(|n| (n, c)))
                .filter(|(n, _)| of_kind(wanted.key, *n))
                .map(|(n, c)| (Subject::Net(n), c))
                .collect();
            counted.push((above.total, counts));
        }
        Some(ev.slide_counted(counted, settled.range.end))
    }

    async fn connect(&self) -> Option<zk::Client> {
        let options = &self.zookeeper;
        let client = zk::Client::connector()
            .with_session_timeout(options.session_timeout)
            .with_connection_timeout(Duration::from_secs(3))
            .connect(&options.connect.servers.join(","))
            .await
            .ok()?;
        match &options.connect.chroot {
            None => Some(client),
            Some(chroot) => client.chroot(chroot.as_str()).ok(),
        }
    }

    async fn read_saved(&self, client: &zk::Client) -> anyhow::Result<Option<SavedAlerts>> {
        match client.get_data(&rules_path(&self.zookeeper.group)).await {
            Ok((data, _)) => Ok(serde_json::from_slice(&data)
                .map_err(|error| warn!(%error, "the rules' state in ZooKeeper is unreadable; starting afresh"))
                .ok()),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn write_saved(&self, client: &zk::Client, saved: &SavedAlerts) -> anyhow::Result<()> {
        let path = rules_path(&self.zookeeper.group);
        let data = serde_json::to_vec(saved)?;
        match client.set_data(&path, &data, None).await {
            Ok(_) => Ok(()),
            Err(zk::Error::NoNode) => {
                let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                match client.create(&path, &data, &options).await {
                    Ok(_) => Ok(()),
                    Err(zk::Error::NodeExists) => {
                        client.set_data(&path, &data, None).await?;
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}
