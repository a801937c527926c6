//! ZooKeeper offsets in the original consumer layout, done right.
//!
//! - `/consumers/<group>/offsets/<topic>/<partition>` holds the next offset to
//!   read as a plain decimal string (`zkCli.sh get` prints `12345`), never a
//!   serialized blob (the original job's pitfall 3).
//! - All partitions are written in one `multi` transaction with version checks.
//! - `/consumers/<group>/owners/<topic>/<partition>` are ephemeral znodes
//!   holding this instance's id: a second instance on the group refuses to
//!   start instead of double-committing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zookeeper_client as zk;

use super::commit::{Attempt, CommitRequest, CommitTarget, commit_loop};
use super::committed::{StoreState, StoreStatus};
use crate::cluster::Ownership;
use crate::cluster::registry::owner_path;
use crate::config::ZkConnect;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    #[error("ZooKeeper {servers}: {source}")]
    Connect { servers: String, source: zk::Error },
    #[error("ZooKeeper {op} {path}: {source}")]
    Op {
        op: &'static str,
        path: String,
        source: zk::Error,
    },
    #[error("ZooKeeper multi commit of {partitions} offsets: {source}")]
    Multi {
        partitions: usize,
        source: zk::MultiWriteError,
    },
    /// `--cluster`: the offsets of partitions whose owner znode this
    /// instance has not taken yet were left out; the rest are committed.
    #[error("{partitions} partitions wait for their ownership to be taken in ZooKeeper")]
    OwnershipPending { partitions: usize },
    #[error(
        "partition {topic}/{partition} of group {group:?} is owned by another ipstats instance \
         ({owner:?}, ephemeral znode {path}); stop that instance or use another --group"
    )]
    OwnedByOther {
        group: String,
        topic: Arc<str>,
        partition: i32,
        owner: String,
        path: String,
    },
}

impl ZkError {
    /// The session is gone: reconnect with a new one.
    fn session_lost(&self) -> bool {
        let source = match self {
            ZkError::Connect { source, .. } | ZkError::Op { source, .. } => source,
            ZkError::Multi { source, .. } => match source {
                zk::MultiWriteError::RequestFailed { source } => source,
                zk::MultiWriteError::OperationFailed { .. } => return false,
            },
            ZkError::OwnedByOther { .. } | ZkError::OwnershipPending { .. } => return false,
        };
        matches!(source, zk::Error::SessionExpired | zk::Error::ClientClosed)
    }

    /// Someone else changed the znodes under us: re-read versions.
    fn conflict(&self) -> bool {
        matches!(
            self,
            ZkError::Multi {
                source: zk::MultiWriteError::OperationFailed { .. },
                ..
            }
        )
    }
}

/// How to reach ZooKeeper and who we are there.
#[derive(Clone, Debug)]
pub struct ZkOptions {
    pub connect: ZkConnect,
    pub group: String,
    pub session_timeout: Duration,
    pub instance_id: String,
    /// `--cluster`: the partitions this instance holds and the versions of
    /// their owner znodes, which every commit checks (instead of the
    /// ephemeral owner znodes of a single instance).
    pub ownership: Option<Arc<Ownership>>,
}

impl ZkOptions {
    pub fn display(&self) -> String {
        format!(
            "{}{}",
            self.connect.servers.join(","),
            self.connect.chroot.as_deref().unwrap_or("")
        )
    }
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

fn ephemeral() -> zk::CreateOptions<'static> {
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all())
}

/// A znode value that is no offset, as it reads (lossily, for the log).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}")]
pub struct GarbledOffset(String);

/// Decodes a stored offset: a plain decimal, or the Java-serialized string
/// that ZkClient wrote without ZKStringSerializer (read once, rewritten plain).
pub fn decode_offset(data: &[u8]) -> Result<i64, GarbledOffset> {
    let text = match data {
        // java.io.ObjectOutputStream: magic AC ED, version 00 05, TC_STRING 74, u16 length
        [0xAC, 0xED, 0x00, 0x05, 0x74, hi, lo, rest @ ..]
            if rest.len() == usize::from(u16::from_be_bytes([*hi, *lo])) =>
        {
            rest
        }
        _ => data,
    };
    std::str::from_utf8(text)
        .ok()
        .map(str::trim)
        .and_then(|t| t.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| GarbledOffset(String::from_utf8_lossy(data).into_owned()))
}

/// A connected ZooKeeper session with the znode versions it has seen.
pub struct ZkStore {
    client: zk::Client,
    options: ZkOptions,
    /// Offset znode path → version last read or written; absent = no znode.
    versions: HashMap<String, i32>,
    parents: HashSet<String>,
    owned: HashSet<(Arc<str>, i32)>,
}

impl ZkStore {
    pub async fn connect(options: &ZkOptions) -> Result<ZkStore, ZkError> {
        let servers = options.connect.servers.join(",");
        let connect_error = |source| ZkError::Connect {
            servers: options.display(),
            source,
        };
        let mut client = zk::Client::connector()
            .with_session_timeout(options.session_timeout)
            .with_connection_timeout(Duration::from_secs(3))
            .connect(&servers)
            .await
            .map_err(connect_error)?;
        if let Some(chroot) = &options.connect.chroot {
            client
                .mkdir(chroot, &persistent())
                .await
                .map_err(connect_error)?;
            client = client
                .chroot(chroot.as_str())
                .map_err(|_| connect_error(zk::Error::BadArguments(&"invalid chroot")))?;
        }
        Ok(ZkStore {
            client,
            options: options.clone(),
            versions: HashMap::new(),
            parents: HashSet::new(),
            owned: HashSet::new(),
        })
    }

    /// Connects, retrying with backoff until it works or `cancel` fires.
    pub async fn connect_retrying(
        options: &ZkOptions,
        status: &StoreStatus,
        cancel: &CancellationToken,
    ) -> Option<ZkStore> {
        let mut backoff = Duration::from_millis(250);
        let mut reported = false;
        loop {
            match ZkStore::connect(options).await {
                Ok(store) => {
                    status.set_state(StoreState::Connected);
                    if reported {
                        info!(zookeeper = %options.display(), "ZooKeeper reachable again");
                    }
                    return Some(store);
                }
                Err(error) => {
                    if !reported {
                        warn!(%error, "ZooKeeper unreachable; retrying with backoff");
                        reported = true;
                    }
                    status.failed(error.to_string());
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn offset_path(&self, topic: &str, partition: i32) -> String {
        format!(
            "/consumers/{}/offsets/{topic}/{partition}",
            self.options.group
        )
    }

    fn owner_path(&self, topic: &str, partition: i32) -> String {
        format!(
            "/consumers/{}/owners/{topic}/{partition}",
            self.options.group
        )
    }

    async fn ensure_parent(&mut self, path: &str) -> Result<(), ZkError> {
        let parent = path.rsplit_once('/').map_or("/", |(p, _)| p).to_string();
        if self.parents.contains(&parent) {
            return Ok(());
        }
        self.client
            .mkdir(&parent, &persistent())
            .await
            .map_err(|source| ZkError::Op {
                op: "mkdir",
                path: parent.clone(),
                source,
            })?;
        self.parents.insert(parent);
        Ok(())
    }

    /// The stored next offset of a partition; a garbled value is reported and
    /// treated as missing (the reset rules then apply, loudly).
    pub async fn read_offset(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, ZkError> {
        let path = self.offset_path(topic, partition);
        match self.client.get_data(&path).await {
            Ok((data, stat)) => {
                self.versions.insert(path.clone(), stat.version);
                match decode_offset(&data) {
                    Ok(offset) => Ok(Some(offset)),
                    Err(raw) => {
                        warn!(%path, value = %raw, "garbled ZooKeeper offset ignored; it is overwritten with a plain decimal at the next commit");
                        Ok(None)
                    }
                }
            }
            Err(zk::Error::NoNode) => {
                self.versions.remove(&path);
                Ok(None)
            }
            Err(source) => Err(ZkError::Op {
                op: "get",
                path,
                source,
            }),
        }
    }

    /// Takes the ephemeral owner znode of a partition. Our own stale znode
    /// (left by a killed process of this instance) is reclaimed at once;
    /// another instance's is waited for up to the session timeout.
    pub async fn claim(&mut self, topic: &Arc<str>, partition: i32) -> Result<(), ZkError> {
        if self.owned.contains(&(topic.clone(), partition)) {
            return Ok(());
        }
        let path = self.owner_path(topic, partition);
        self.ensure_parent(&path).await?;
        let deadline = Instant::now() + self.options.session_timeout + Duration::from_secs(1);
        let op_error = |op, source| ZkError::Op {
            op,
            path: path.clone(),
            source,
        };
        let mut waiting_reported = false;
        loop {
            match self
                .client
                .create(&path, self.options.instance_id.as_bytes(), &ephemeral())
                .await
            {
                Ok(_) => {
                    self.owned.insert((topic.clone(), partition));
                    return Ok(());
                }
                Err(zk::Error::NodeExists) => {}
                Err(source) => return Err(op_error("create", source)),
            }
            let (owner, stat) = match self.client.get_data(&path).await {
                Ok(found) => found,
                Err(zk::Error::NoNode) => continue,
                Err(source) => return Err(op_error("get", source)),
            };
            if stat.ephemeral_owner == self.client.session_id().0 {
                self.owned.insert((topic.clone(), partition));
                return Ok(());
            }
            if owner == self.options.instance_id.as_bytes() {
                info!(%path, "reclaiming ownership left by an earlier run of this instance");
                match self.client.delete(&path, Some(stat.version)).await {
                    Ok(()) | Err(zk::Error::NoNode | zk::Error::BadVersion) => continue,
                    Err(source) => return Err(op_error("delete", source)),
                }
            }
            let owner = String::from_utf8_lossy(&owner).into_owned();
            if Instant::now() >= deadline {
                return Err(ZkError::OwnedByOther {
                    group: self.options.group.clone(),
                    topic: topic.clone(),
                    partition,
                    owner,
                    path,
                });
            }
            if !waiting_reported {
                warn!(%path, %owner, timeout = ?self.options.session_timeout,
                    "partition owned by another instance; waiting for its session to expire");
                waiting_reported = true;
            }
            // Poll the znode until it goes or the session timeout passes.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Writes every offset in one `multi`, each guarded by the znode version
    /// last seen. On a conflict the versions are re-read for the next try.
    pub async fn commit(&mut self, request: &CommitRequest) -> Result<(), ZkError> {
        if let Some(ownership) = self.options.ownership.clone() {
            return self.commit_fenced(request, &ownership).await;
        }
        let mut paths = Vec::with_capacity(request.offsets.len());
        for (topic, partition, _) in &request.offsets {
            self.claim(topic, *partition).await?;
            let path = self.offset_path(topic, *partition);
            self.ensure_parent(&path).await?;
            paths.push(path);
        }
        let values: Vec<String> = request
            .offsets
            .iter()
            .map(|(_, _, o)| o.to_string())
            .collect();
        let mut writer = self.client.new_multi_writer();
        for (path, value) in paths.iter().zip(&values) {
            let added = match self.versions.get(path) {
                Some(version) => writer.add_set_data(path, value.as_bytes(), Some(*version)),
                None => writer.add_create(path, value.as_bytes(), &persistent()),
            };
            added.map_err(|source| ZkError::Op {
                op: "multi",
                path: path.clone(),
                source,
            })?;
        }
        let result = writer.commit().await;
        match result {
            Ok(results) => {
                for (path, result) in paths.into_iter().zip(results) {
                    let version = match result {
                        zk::MultiWriteResult::SetData { stat } => stat.version,
                        zk::MultiWriteResult::Create { stat, .. } => stat.version.max(0),
                        _ => continue,
                    };
                    self.versions.insert(path, version);
                }
                Ok(())
            }
            Err(source) => Err(self.failed(request, paths.len(), source).await),
        }
    }
}

impl ZkStore {
    /// A `multi` that failed: after a conflict (someone else wrote the
    /// znodes) the versions are read again for the next try.
    async fn failed(
        &mut self,
        request: &CommitRequest,
        partitions: usize,
        source: zk::MultiWriteError,
    ) -> ZkError {
        let error = ZkError::Multi { partitions, source };
        if error.conflict() {
            for (topic, partition, _) in &request.offsets {
                // Best effort: a failure here surfaces on the next try.
                let _ = self.read_offset(topic, *partition).await;
            }
        }
        error
    }

    /// `--cluster`: writes the offsets of the partitions this instance
    /// still owns in one `multi`, each preceded by a check that its owner
    /// znode is at the version this instance wrote: once another instance
    /// has taken a partition, no commit of it from here can succeed.
    async fn commit_fenced(
        &mut self,
        request: &CommitRequest,
        ownership: &Ownership,
    ) -> Result<(), ZkError> {
        let mut writes = Vec::new();
        let mut pending = 0;
        for (topic, partition, offset) in &request.offsets {
            let Some(version) = ownership.fence_of(topic, *partition, *offset) else {
                // This instance's to commit, but its owner znode is not
                // taken yet: the commit waits for it.
                pending += usize::from(ownership.may_commit(topic, *partition, *offset));
                continue;
            };
            let path = self.offset_path(topic, *partition);
            self.ensure_parent(&path).await?;
            if !self.versions.contains_key(&path) {
                self.read_offset(topic, *partition).await?;
            }
            let owner = owner_path(&self.options.group, topic, *partition);
            writes.push((owner, version, path, offset.to_string()));
        }
        // Committed so far, then tried again: a request left unchanged
        // (no new records) would otherwise never reach those partitions.
        let done = if pending > 0 {
            Err(ZkError::OwnershipPending {
                partitions: pending,
            })
        } else {
            Ok(())
        };
        if writes.is_empty() {
            return done;
        }
        let mut writer = self.client.new_multi_writer();
        for (owner, version, path, value) in &writes {
            let op_error = |source| ZkError::Op {
                op: "multi",
                path: path.clone(),
                source,
            };
            writer
                .add_check_version(owner, *version)
                .map_err(op_error)?;
            match self.versions.get(path) {
                Some(v) => writer.add_set_data(path, value.as_bytes(), Some(*v)),
                None => writer.add_create(path, value.as_bytes(), &persistent()),
            }
            .map_err(op_error)?;
        }
        match writer.commit().await {
            Ok(results) => {
                // Results come in pairs: the check, then the write.
                for ((_, _, path, _), result) in
                    writes.iter().zip(results.into_iter().skip(1).step_by(2))
                {
                    let version = match result {
                        zk::MultiWriteResult::SetData { stat } => stat.version,
                        zk::MultiWriteResult::Create { stat, .. } => stat.version.max(0),
                        _ => continue,
                    };
                    self.versions.insert(path.clone(), version);
                }
                done
            }
            Err(source) => {
                if let zk::MultiWriteError::OperationFailed { index, .. } = &source
                    && index % 2 == 0
                    && let Some((owner, ..)) = writes.get(index / 2)
                    && let Some((topic, partition, _)) = request
                        .offsets
                        .iter()
                        .find(|(t, p, _)| owner_path(&self.options.group, t, *p) == *owner)
                {
                    warn!(%topic, partition, "another instance took this partition: its offsets are no longer committed from here");
                    ownership.fence_failed(topic, *partition);
                }
                Err(self.failed(request, writes.len(), source).await)
            }
        }
    }
}

struct ZkTarget<'a> {
    store: Option<ZkStore>,
    options: ZkOptions,
    status: &'a StoreStatus,
    cancel: &'a CancellationToken,
}

impl CommitTarget for ZkTarget<'_> {
    async fn attempt(&mut self, request: &CommitRequest, stopping: bool) -> Attempt {
        if self.store.is_none() {
            self.store = if stopping {
                tokio::time::timeout(Duration::from_secs(3), ZkStore::connect(&self.options))
                    .await
                    .ok()
                    .and_then(Result::ok)
            } else {
                ZkStore::connect_retrying(&self.options, self.status, self.cancel).await
            };
        }
        let Some(store) = self.store.as_mut() else {
            return Attempt::Stopped;
        };
        match store.commit(request).await {
            Ok(()) => Attempt::Committed,
            Err(error @ ZkError::OwnedByOther { .. }) => Attempt::Fatal(error.into()),
            Err(error @ ZkError::OwnershipPending { .. }) => Attempt::Waiting(error.to_string()),
            Err(error) => {
                let result = if error.conflict() {
                    "conflict"
                } else {
                    "error"
                };
                if error.session_lost() {
                    self.store = None;
                }
                Attempt::Retry {
                    error: error.to_string(),
                    result,
                }
            }
        }
    }
}

/// Commits every published request to ZooKeeper (see [`commit_loop`]),
/// reconnecting after session loss; ownership taken by another instance in
/// the meantime stops the service.
pub async fn run_committer(
    store: Option<ZkStore>,
    options: ZkOptions,
    requests: watch::Receiver<Arc<CommitRequest>>,
    committed: Arc<super::committed::Committed>,
    metrics: Metrics,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let status = &committed.zookeeper;
    let mut target = ZkTarget {
        store,
        options,
        status,
        cancel: &cancel,
    };
    commit_loop(
        "zookeeper",
        requests,
        status,
        &metrics,
        &cancel,
        &mut target,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_decode_plain_and_java_serialized_values() {
        assert_eq!(decode_offset(b"12345"), Ok(12345));
        assert_eq!(decode_offset(b" 7\n"), Ok(7));
        // what ZkClient without ZKStringSerializer wrote for "12345"
        assert_eq!(decode_offset(b"\xac\xed\x00\x05t\x00\x0512345"), Ok(12345));
        assert!(
            decode_offset(b"\xac\xed\x00\x05t\x00\x0912345").is_err(),
            "length mismatch"
        );
        assert!(decode_offset(b"-1").is_err());
        assert!(decode_offset(b"{\"offset\":1}").is_err());
        assert!(decode_offset(b"").is_err());
    }
}
