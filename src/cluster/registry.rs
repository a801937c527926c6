//! Who the other instances are.
//!
//! With `--zookeeper` each instance keeps an ephemeral znode
//! `/ipstats/<group>/instances/<id>` holding `{"id","url","partitions"}`
//! and reads its siblings once a second. It also takes each partition it is
//! handed: `/ipstats/<group>/owners/<topic>/<partition>` is a persistent
//! znode whose data is the owner's id and whose version only grows, so a
//! commit that checks the version it wrote fails once anyone else has
//! taken the partition, however long this instance was frozen (see
//! [`super::Ownership::fence_of`]). Without ZooKeeper the members are this
//! instance and `--peers`.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zookeeper_client as zk;

use super::{Cluster, Ownership, label};
use crate::config::ZkConnect;
use crate::metrics::Metrics;

/// How often the registry refreshes and checks ownership.
pub const REFRESH: Duration = Duration::from_secs(1);

/// One instance as the registry lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub url: String,
    #[serde(default)]
    pub partitions: Vec<String>,
}

/// Every known instance, this one included.
#[derive(Clone, Debug, Default)]
pub struct Roster {
    pub members: Vec<Member>,
}

pub type Members = Arc<ArcSwap<Roster>>;

/// The instance that evaluates the rules on the cluster's counts and
/// delivers the alerts, as the registry last saw it (`None`: unknown, or
/// ZooKeeper unreachable), and whether it is this one.
#[derive(Clone, Debug, Default)]
pub struct Leadership {
    pub leader: Option<Member>,
    pub me: bool,
}

pub type Leader = Arc<ArcSwap<Leadership>>;

/// The roster before the registry has run: this instance and `--peers`.
pub fn initial(cluster: &Cluster) -> Members {
    let mut members = vec![Member {
        id: cluster.instance_id.clone(),
        url: cluster.advertise_url.clone(),
        partitions: Vec::new(),
    }];
    members.extend(cluster.peers.iter().map(|url| Member {
        id: url.clone(),
        url: url.clone(),
        partitions: Vec::new(),
    }));
    Arc::new(ArcSwap::from_pointee(Roster { members }))
}

fn instances_dir(group: &str) -> String {
    format!("/ipstats/{group}/instances")
}

fn leader_path(group: &str) -> String {
    format!("/ipstats/{group}/leader")
}

/// Where the leader keeps the rules' state for its successor.
pub fn rules_path(group: &str) -> String {
    format!("/ipstats/{group}/rules")
}

pub fn owner_path(group: &str, topic: &str, partition: i32) -> String {
    format!("/ipstats/{group}/owners/{topic}/{partition}")
}

/// Where the registry lives.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    pub connect: ZkConnect,
    pub group: String,
    pub session_timeout: Duration,
}

/// Keeps this instance registered and the roster fresh until `cancel`.
pub async fn run(
    cluster: Cluster,
    options: RegistryOptions,
    ownership: Arc<Ownership>,
    members: Members,
    leader: Leader,
    metrics: Metrics,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut session: Option<Session> = None;
    let mut reported = false;
    loop {
        if session.is_none() {
            match Session::open(&options, &cluster).await {
                Ok(s) => {
                    if reported {
                        info!("cluster registry reachable again");
                    }
                    reported = false;
                    session = Some(s);
                }
                Err(error) => {
                    if !reported {
                        warn!(%error, "cluster registry: ZooKeeper unreachable; retrying");
                        reported = true;
                    }
                }
            }
        }
        if let Some(s) = session.as_mut() {
            match s.turn(&ownership).await {
                Ok(roster) => {
                    metrics.cluster_instances.set(roster.members.len() as i64);
                    members.store(Arc::new(roster));
                    match s.elect().await {
                        Ok(now) => {
                            let before = leader.load();
                            if before.me != now.me {
                                info!(leader = ?now.leader.as_ref().map(|m| &m.id), me = now.me, "rules leader");
                            }
                            leader.store(Arc::new(now));
                        }
                        Err(error) => {
                            warn!(%error, "cluster registry: leader election failed");
                            leader.store(Arc::default());
                        }
                    }
                }
                Err(error) => {
                    warn!(%error, "cluster registry: ZooKeeper failed; reconnecting");
                    leader.store(Arc::default());
                    session = None;
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(REFRESH) => {}
        }
    }
    if let Some(s) = session {
        // Leave at once rather than when the session expires.
        let _ = s.client.delete(&s.me, None).await;
        if leader.load().me {
            let _ = s.client.delete(&leader_path(&s.group), None).await;
        }
    }
    Ok(())
}

struct Session {
    client: zk::Client,
    group: String,
    me: String,
    member: Member,
    /// The data last written to our znode.
    written: Option<Vec<u8>>,
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

fn ephemeral() -> zk::CreateOptions<'static> {
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all())
}

impl Session {
    async fn open(options: &RegistryOptions, cluster: &Cluster) -> anyhow::Result<Session> {
        let mut client = zk::Client::connector()
            .with_session_timeout(options.session_timeout)
            .with_connection_timeout(Duration::from_secs(3))
            .connect(&options.connect.servers.join(","))
            .await?;
        if let Some(chroot) = &options.connect.chroot {
            client.mkdir(chroot, &persistent()).await?;
            client = client
                .chroot(chroot.as_str())
                .map_err(|_| anyhow::anyhow!("invalid chroot {chroot}"))?;
        }
        let dir = instances_dir(&options.group);
        client.mkdir(&dir, &persistent()).await?;
        Ok(Session {
            me: format!("{dir}/{}", cluster.instance_id),
            client,
            group: options.group.clone(),
            member: Member {
                id: cluster.instance_id.clone(),
                url: cluster.advertise_url.clone(),
                partitions: Vec::new(),
            },
            written: None,
        })
    }

    /// Takes newly held partitions, checks the others, keeps our znode
    /// current and reads the roster.
    async fn turn(&mut self, ownership: &Ownership) -> anyhow::Result<Roster> {
        let (generation, held) = ownership.held();
        for (key, fence) in &held {
            let path = owner_path(&self.group, &key.0, key.1);
            match fence {
                None => {
                    let version = self.take(&path).await?;
                    info!(partition = %label(&key.0, key.1), version, "partition ownership taken in ZooKeeper");
                    ownership.fenced(generation, key, version);
                }
                Some(version) => match self.client.get_data(&path).await {
                    Ok((data, stat))
                        if data == self.member.id.as_bytes() && stat.version == *version => {}
                    Ok((data, _)) => {
                        warn!(partition = %label(&key.0, key.1), owner = %String::from_utf8_lossy(&data),
                            "another instance took this partition; it is neither served nor committed here");
                        ownership.lost(generation, key);
                    }
                    Err(zk::Error::NoNode) => ownership.lost(generation, key),
                    Err(e) => return Err(e.into()),
                },
            }
        }
        ownership.confirmed(generation);
        self.member.partitions = ownership.held_labels();
        let data = serde_json::to_vec(&self.member)?;
        if self.written.as_ref() != Some(&data) {
            match self.client.set_data(&self.me, &data, None).await {
                Ok(_) => {}
                Err(zk::Error::NoNode) => {
                    self.client.create(&self.me, &data, &ephemeral()).await?;
                }
                Err(e) => return Err(e.into()),
            }
            self.written = Some(data);
        }
        self.roster().await
    }

    /// The leader: whoever holds the ephemeral leader znode; this instance
    /// takes it when it is free.
    async fn elect(&self) -> anyhow::Result<Leadership> {
        let path = leader_path(&self.group);
        let data = serde_json::to_vec(&Member {
            partitions: Vec::new(),
            ..self.member.clone()
        })?;
        match self.client.create(&path, &data, &ephemeral()).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(e.into()),
        }
        let (data, stat) = self.client.get_data(&path).await?;
        let leader: Member = serde_json::from_slice(&data)?;
        Ok(Leadership {
            me: stat.ephemeral_owner == self.client.session_id().0,
            leader: Some(leader),
        })
    }

    /// Writes our id on a partition's owner znode; returns the new version.
    async fn take(&self, path: &str) -> anyhow::Result<i32> {
        let id = self.member.id.as_bytes();
        loop {
            match self.client.set_data(path, id, None).await {
                Ok(stat) => return Ok(stat.version),
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(e.into()),
            }
            if let Some((parent, _)) = path.rsplit_once('/') {
                self.client.mkdir(parent, &persistent()).await?;
            }
            match self.client.create(path, id, &persistent()).await {
                Ok((stat, _)) => return Ok(stat.version.max(0)),
                Err(zk::Error::NodeExists) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn roster(&self) -> anyhow::Result<Roster> {
        let dir = instances_dir(&self.group);
        let (children, _) = self.client.get_children(&dir).await?;
        let mut members = Vec::with_capacity(children.len());
        for child in children {
            let Ok((data, _)) = self.client.get_data(&format!("{dir}/{child}")).await else {
                continue;
            };
            match serde_json::from_slice::<Member>(&data) {
                Ok(m) => members.push(m),
                Err(error) => {
                    warn!(%child, %error, "cluster registry: unreadable instance znode ignored")
                }
            }
        }
        if !members.iter().any(|m| m.id == self.member.id) {
            members.push(self.member.clone());
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Roster { members })
    }
}
