//! Offsets: where to start each partition, and committing progress to
//! ZooKeeper (the original job's layout) and to the Kafka consumer group.
//!
//! Start rule, as the original `getOffsets`, plus the cases it missed: the
//! stored offset is the first one found in the checkpoint, ZooKeeper (with
//! `--zookeeper`), the Kafka group ([`choose_stored`]). Inside
//! `[log start, log end]` it is used; none stored, below the log start
//! (expired by retention) or above the log end (topic recreated) is a
//! *reset* — never silent: logged, counted, shown.
//!
//! - [`commit`]: the retry loop both committers share.
//! - [`zookeeper`], [`kafka_group`]: the two stores.
//! - [`committed`]: what each store last holds, for the HTTP status pages.
//! - [`instance`]: this instance's id, its name in ZooKeeper's owner znodes.

pub mod commit;
pub mod committed;
pub mod instance;
pub mod kafka_group;
pub mod zookeeper;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::OffsetReset;
use crate::vocab::{Origin, Reset, ResetReason, Stored, offset_text};

pub use commit::CommitRequest;

/// `--offset-reset fail` met a partition without a usable offset.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error(
    "{topic}/{partition}: stored offset {stored}{origin} is unusable ({reason}; log start {log_start}, \
     log end {log_end}) and --offset-reset is fail; choose --offset-reset earliest or latest"
)]
pub struct ResetRefused {
    pub topic: Arc<str>,
    pub partition: i32,
    pub stored: String,
    /// " (from …)" naming the store, or empty.
    pub origin: String,
    pub reason: ResetReason,
    pub log_start: i64,
    pub log_end: i64,
}

/// Next offsets per partition, each with the store it came from.
pub type StoredOffsets = HashMap<(Arc<str>, i32), Stored>;

/// `(topic, partition)` → next offset, as one store holds them.
pub type OffsetsOf = HashMap<(Arc<str>, i32), i64>;

/// The stored offset of each partition: the checkpoint's, else ZooKeeper's,
/// else the Kafka group's. The checkpoint comes first because the counts it
/// restores end exactly there; ZooKeeper before the group because it is
/// where the original job kept them. When a store that lost holds a
/// different offset, the note says which one won and why.
pub fn choose_stored(
    checkpoint: &OffsetsOf,
    zookeeper: &OffsetsOf,
    group: &OffsetsOf,
) -> StoredOffsets {
    let keys: BTreeSet<&(Arc<str>, i32)> = checkpoint
        .keys()
        .chain(zookeeper.keys())
        .chain(group.keys())
        .collect();
    let mut chosen = StoredOffsets::new();
    for key in keys {
        let [c, z, g] = [checkpoint, zookeeper, group].map(|m| m.get(key).copied());
        let (offset, origin) = match (c, z, g) {
            (Some(o), _, _) => (o, Origin::Checkpoint),
            (None, Some(o), _) => (o, Origin::Zookeeper),
            (None, None, Some(o)) => (o, Origin::KafkaGroup),
            (None, None, None) => continue,
        };
        let others: Vec<String> = [(Origin::Zookeeper, z), (Origin::KafkaGroup, g)]
            .into_iter()
            .filter_map(|(o, v)| Some((o, v?)))
            .filter(|(o, v)| *o != origin && *v != offset)
            .map(|(o, v)| format!("{} has {v}", store_name(o)))
            .collect();
        let note = (!others.is_empty()).then(|| {
            let why = match origin {
                Origin::Checkpoint => "the counts restored from it end there",
                Origin::Zookeeper => "with --zookeeper, ZooKeeper comes before the group",
                Origin::KafkaGroup => "no other store holds an offset",
            };
            format!(
                "{} offset {offset} used ({why}); {}",
                store_name(origin),
                others.join(", ")
            )
        });
        chosen.insert(
            (key.0.clone(), key.1),
            Stored {
                offset,
                origin,
                note,
            },
        );
    }
    chosen
}

fn store_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Checkpoint => "the checkpoint's",
        Origin::Zookeeper => "ZooKeeper's",
        Origin::KafkaGroup => "the Kafka group's",
    }
}

/// Where a partition starts: the stored offset when usable, else the policy.
pub fn resolve_start(
    topic: &Arc<str>,
    partition: i32,
    found: Option<&Stored>,
    log_start: i64,
    log_end: i64,
    policy: OffsetReset,
) -> Result<(i64, Option<Reset>), ResetRefused> {
    let stored = found.map(|s| s.offset);
    let origin = found.map(|s| s.origin);
    let reason = match stored {
        Some(s) if (log_start..=log_end).contains(&s) => return Ok((s, None)),
        None => ResetReason::Missing,
        Some(s) if s < log_start => ResetReason::Expired,
        Some(_) => ResetReason::Ahead,
    };
    let start = match (reason, policy) {
        (_, OffsetReset::Fail) => {
            return Err(ResetRefused {
                topic: topic.clone(),
                partition,
                stored: offset_text(stored),
                origin: origin.map_or_else(String::new, |o| format!(" (from {o})")),
                reason,
                log_start,
                log_end,
            });
        }
        // Expired records are gone: the oldest one left is the closest to
        // where we were, as the original job did.
        (ResetReason::Expired, _) | (_, OffsetReset::Earliest) => log_start,
        (_, OffsetReset::Latest) => log_end,
    };
    let lost = match (reason, stored) {
        (ResetReason::Expired, Some(s)) => log_start - s,
        _ => 0,
    };
    Ok((
        start,
        Some(Reset {
            reason,
            stored,
            origin,
            start,
            log_start,
            log_end,
            lost,
            at: SystemTime::now(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        stored: Option<i64>,
        policy: OffsetReset,
    ) -> Result<(i64, Option<ResetReason>, i64), ResetRefused> {
        let stored = stored.map(|offset| Stored {
            offset,
            origin: Origin::Zookeeper,
            note: None,
        });
        resolve_start(&Arc::from("t"), 0, stored.as_ref(), 100, 200, policy).map(
            |(start, reset)| {
                let lost = reset.as_ref().map_or(0, |r| r.lost);
                (start, reset.map(|r| r.reason), lost)
            },
        )
    }

    #[test]
    fn a_usable_stored_offset_is_used_as_is() {
        for stored in [100, 150, 200] {
            assert_eq!(
                resolve(Some(stored), OffsetReset::Fail),
                Ok((stored, None, 0))
            );
        }
    }

    #[test]
    fn missing_follows_the_policy() {
        assert_eq!(
            resolve(None, OffsetReset::Earliest),
            Ok((100, Some(ResetReason::Missing), 0))
        );
        assert_eq!(
            resolve(None, OffsetReset::Latest),
            Ok((200, Some(ResetReason::Missing), 0))
        );
        assert!(resolve(None, OffsetReset::Fail).is_err_and(|e| {
            let e = e.to_string();
            e.contains("t/0") && e.contains("missing")
        }));
    }

    #[test]
    fn expired_starts_at_the_log_start_and_counts_the_loss() {
        for policy in [OffsetReset::Earliest, OffsetReset::Latest] {
            assert_eq!(
                resolve(Some(40), policy),
                Ok((100, Some(ResetReason::Expired), 60))
            );
        }
        let refused = resolve(Some(40), OffsetReset::Fail)
            .expect_err("fail refuses")
            .to_string();
        assert!(
            refused.contains("stored offset 40 (from zookeeper)")
                && refused.contains("log start 100"),
            "{refused}"
        );
    }

    #[test]
    fn ahead_of_the_log_end_follows_the_policy() {
        assert_eq!(
            resolve(Some(999), OffsetReset::Earliest),
            Ok((100, Some(ResetReason::Ahead), 0))
        );
        assert_eq!(
            resolve(Some(999), OffsetReset::Latest),
            Ok((200, Some(ResetReason::Ahead), 0))
        );
    }

    fn offsets(entries: &[(i32, i64)]) -> OffsetsOf {
        entries
            .iter()
            .map(|(p, o)| ((Arc::from("t"), *p), *o))
            .collect()
    }

    #[test]
    fn the_checkpoint_then_zookeeper_then_the_group_and_a_note_on_disagreement() {
        let checkpoint = offsets(&[(0, 50)]);
        let zookeeper = offsets(&[(0, 40), (1, 70), (2, 5)]);
        let group = offsets(&[(0, 50), (1, 90), (2, 5), (3, 8)]);
        let chosen = choose_stored(&checkpoint, &zookeeper, &group);
        let get = |p: i32| chosen.get(&(Arc::from("t"), p)).cloned();
        let p0 = get(0).expect("p0");
        assert_eq!((p0.offset, p0.origin), (50, Origin::Checkpoint));
        assert_eq!(
            p0.note.as_deref(),
            Some(
                "the checkpoint's offset 50 used (the counts restored from it end there); \
                 ZooKeeper's has 40"
            )
        );
        let p1 = get(1).expect("p1");
        assert_eq!((p1.offset, p1.origin), (70, Origin::Zookeeper));
        assert!(
            p1.note
                .as_deref()
                .is_some_and(|n| n.contains("ZooKeeper comes before the group")
                    && n.contains("the Kafka group's has 90")),
            "{p1:?}"
        );
        // Agreement needs no note.
        assert_eq!(
            get(2).map(|s| (s.offset, s.origin, s.note)),
            Some((5, Origin::Zookeeper, None))
        );
        assert_eq!(
            get(3).map(|s| (s.offset, s.origin, s.note)),
            Some((8, Origin::KafkaGroup, None))
        );
        assert_eq!(chosen.len(), 4);
    }

    #[test]
    fn an_expired_group_offset_is_a_reset_naming_its_store() {
        let stored = Stored {
            offset: 40,
            origin: Origin::KafkaGroup,
            note: None,
        };
        let (start, reset) = resolve_start(
            &Arc::from("t"),
            0,
            Some(&stored),
            100,
            200,
            OffsetReset::Latest,
        )
        .expect("resolves");
        let reset = reset.expect("a reset");
        assert_eq!(
            (start, reset.reason, reset.origin, reset.lost),
            (100, ResetReason::Expired, Some(Origin::KafkaGroup), 60)
        );
    }
}
