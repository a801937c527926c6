//! One instance's part of a cluster answer: what it counted over a range
//! every instance is asked about, in the shapes the merge needs (its top
//! keys, every key above a threshold, the counts of given keys, the
//! addresses it saw). Keys are networks (an address is its /32 or /128),
//! written in CIDR form on the wire.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Coverage;
use crate::owners::OwnerKind;
use crate::query::bounded::Trust;
use crate::query::owners::{asn_members, owned_addresses};
use crate::query::{Grouping, MergeCache, Range};
use crate::vocab::{IpKey, Network};
use crate::window::Pane;

/// What is asked of every instance.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PartRequest {
    /// The range, in milliseconds since the epoch: `[start_ms, end_ms)`.
    pub start_ms: i64,
    pub end_ms: i64,
    /// Networks instead of addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grouping: Option<(u8, u8)>,
    pub ask: Ask,
    /// Only the addresses inside this network (CIDR), for one network's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<String>,
    /// The view of an earlier round to answer from (see [`PartReply::view`]):
    /// all rounds of one answer read the same counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Ask {
    /// Totals only.
    Totals,
    /// The `k` most counted keys (count descending, then key).
    Top { k: usize },
    /// Every key counted at least `min` times.
    Above { min: u64 },
    /// The counts of these keys (absent ones are 0).
    Counts { keys: Vec<String> },
    /// Every address counted, or those inside these networks.
    Addresses { within: Option<Vec<String>> },
    /// One address, pane by pane.
    Ip { ip: String },
    /// Every owner (`asn` or `country`) with its requests and addresses.
    Owners { group: String },
    /// One autonomous system's addresses with their counts.
    AsnMembers { asn: u32 },
}

/// One key's share: `(key, count, distinct addresses)`.
pub type Item = (String, u64, u64);

/// One instance's part.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PartReply {
    pub id: String,
    pub url: String,
    /// Which of this instance's views answered; `None` when the view asked
    /// for is no longer kept (the asker then treats this part as missing).
    pub view: Option<u64>,
    /// Where the replying view's counts end (epoch ms): its current
    /// window's end, or the end of the newest pane counted ahead of it.
    #[serde(default)]
    pub window_end_ms: i64,
    pub coverage: Coverage,
    pub total_requests: u64,
    /// Distinct addresses this instance counted in the range.
    pub distinct_ips: u64,
    /// With `within`: the requests of the addresses inside the network.
    #[serde(default)]
    pub within_count: u64,
    pub exact: bool,
    pub error_bound: u64,
    #[serde(default)]
    pub items: Vec<Item>,
    #[serde(default)]
    pub addresses: Vec<String>,
    /// `Ip`: `(start_ms, end_ms, count)` per pane of the range.
    #[serde(default)]
    pub panes: Vec<(i64, i64, u64)>,
    /// `Owners`: each owner (`AS16509`, `DE`), its requests and its
    /// addresses (none when a pane of the range is summarized).
    #[serde(default)]
    pub owned: Vec<(String, u64, Vec<String>)>,
}

/// Every instance's answer to one round, in the order asked: `None` when
/// it did not answer in time.
pub type Parts = Vec<Option<PartReply>>;

pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub fn time_of(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl PartRequest {
    pub fn range(&self) -> Range {
        Range {
            start: time_of(self.start_ms),
            end: time_of(self.end_ms),
        }
    }

    pub fn over(range: Range, grouping: Option<Grouping>, ask: Ask) -> Self {
        PartRequest {
            start_ms: millis(range.start),
            end_ms: millis(range.end),
            grouping: grouping.map(|g| (g.prefix4, g.prefix6)),
            ask,
            within: None,
            view: None,
        }
    }

    /// The same question about the addresses inside `network` only.
    pub fn within(mut self, network: Option<String>) -> Self {
        self.within = network;
        self
    }

    /// The same question, answered from view `view`.
    pub fn pinned(mut self, view: Option<u64>) -> Self {
        self.view = view;
        self
    }

    fn grouping(&self) -> Grouping {
        self.grouping
            .map_or(Grouping::ADDRESSES, |(prefix4, prefix6)| Grouping {
                prefix4,
                prefix6,
            })
    }

    /// This instance's part, from its kept panes (oldest first).
    pub fn answer(&self, kept: &[Arc<Pane>], merges: &MergeCache) -> PartReply {
        let range = self.range();
        let merged = merges.merge(range.panes(kept));
        let trust = Trust::of_addresses(range.panes(kept));
        let grouping = self.grouping();
        let inside: Option<Network> = self.within.as_deref().and_then(read_key);
        let counts = || {
            merged
                .iter()
                .filter(move |(ip, _)| inside.is_none_or(|n| n.contains(*ip)))
        };
        let mut reply = PartReply {
            total_requests: range.panes(kept).map(|p| p.requests).sum(),
            distinct_ips: merged.len() as u64,
            exact: !trust.summarized,
            error_bound: trust.error_bound,
            ..PartReply::default()
        };
        if inside.is_some() {
            reply.within_count = counts().map(|(_, c)| c).sum();
        }
        let keyed = || keyed(counts(), grouping);
        match &self.ask {
            Ask::Totals => {}
            Ask::Top { k } => reply.items = best(keyed().collect(), *k),
            Ask::Above { min } => reply.items = keyed().filter(|i| i.1 >= *min).collect(),
            Ask::Counts { keys } => {
                let asked: HashSet<&str> = keys.iter().map(String::as_str).collect();
                let mut found: HashMap<String, (u64, u64)> = keyed()
                    .filter(|i| asked.contains(i.0.as_str()))
                    .map(|(k, c, d)| (k, (c, d)))
                    .collect();
                reply.items = keys
                    .iter()
                    .map(|k| {
                        let (c, d) = found.remove(k).unwrap_or((0, 0));
                        (k.clone(), c, d)
                    })
                    .collect();
            }
            Ask::Addresses { within } => {
                let networks: Option<Vec<Network>> = within
                    .as_ref()
                    .map(|w| w.iter().filter_map(|n| read_key(n)).collect());
                reply.addresses = counts()
                    .filter(|(ip, _)| {
                        networks
                            .as_ref()
                            .is_none_or(|ns| ns.iter().any(|n| n.contains(*ip)))
                    })
                    .map(|(ip, _)| ip.to_string())
                    .collect();
            }
            Ask::Owners { group } => {
                if let Some(kind) = OwnerKind::parse(group) {
                    // What the owners' counts may lack, not the addresses'.
                    let (owned, trust) = owned_addresses(range.panes(kept), kind);
                    reply.exact = !trust.summarized;
                    reply.error_bound = trust.error_bound;
                    reply.owned = owned
                        .into_iter()
                        .map(|(key, count, addresses)| {
                            let addresses = addresses.iter().map(IpKey::to_string).collect();
                            (kind.subject(key).to_string(), count, addresses)
                        })
                        .collect();
                }
            }
            Ask::AsnMembers { asn } => {
                let members = asn_members(range.panes(kept), *asn, usize::MAX);
                reply.exact = !members.trust.summarized;
                reply.error_bound = members.trust.error_bound;
                reply.within_count = members.count;
                reply.items = members
                    .top
                    .into_iter()
                    .map(|(ip, count)| (ip.to_string(), count, 1))
                    .collect();
            }
            Ask::Ip { ip } => {
                if let Some(ip) = crate::vocab::parse_ip(ip) {
                    reply.panes = range
                        .panes(kept)
                        .map(|p| (millis(p.start), millis(p.end), u64::from(p.count(ip))))
                        .collect();
                }
            }
        }
        reply
    }
}

/// A key as written on the wire: an address, or a network in CIDR form.
pub fn read_key(text: &str) -> Option<Network> {
    match crate::vocab::parse_ip(text) {
        Some(ip) => Some(Network::of(ip, 32, 128)),
        None => Network::parse(text),
    }
}

/// Counts per key, in key order: addresses come in order, so a network's
/// addresses are one run.
fn keyed(
    counts: impl Iterator<Item = (IpKey, u64)>,
    grouping: Grouping,
) -> impl Iterator<Item = Item> {
    let addresses = grouping == Grouping::ADDRESSES;
    let mut run: Option<(Network, u64, u64)> = None;
    let mut counts = counts.fuse();
    std::iter::from_fn(move || {
        loop {
            let Some((ip, n)) = counts.next() else {
                return run
                    .take()
                    .map(|(net, c, d)| (write_key(net, addresses), c, d));
            };
            if addresses {
                return Some((ip.to_string(), n, 1));
            }
            let network = Network::of(ip, grouping.prefix4, grouping.prefix6);
            match &mut run {
                Some((net, c, d)) if *net == network => {
                    *c += n;
                    *d += 1;
                }
                _ => {
                    let done = run.replace((network, n, 1));
                    if let Some((net, c, d)) = done {
                        return Some((write_key(net, addresses), c, d));
                    }
                }
            }
        }
    })
}

fn write_key(network: Network, address: bool) -> String {
    if address {
        let (bits, _) = network.to_parts();
        IpKey::from_bits(bits).to_string()
    } else {
        network.to_string()
    }
}

/// The order of every answer: count descending, then key ascending (as
/// keys order, not as text).
pub fn rank(a: &Item, b: &Item) -> std::cmp::Ordering {
    b.1.cmp(&a.1)
        .then_with(|| match (read_key(&a.0), read_key(&b.0)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => a.0.cmp(&b.0),
        })
}

/// The best `k` items in [`rank`] order.
pub fn best(mut items: Vec<Item>, k: usize) -> Vec<Item> {
    if k < items.len() {
        items.select_nth_unstable_by(k, rank);
        items.truncate(k);
    }
    items.sort_unstable_by(rank);
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::SkipCounts;
    use crate::window::{IpMap, PaneCounts};

    fn pane(index: u64, records: &[(&str, u32)]) -> Arc<Pane> {
        let mut counts = IpMap::default();
        for &(ip, n) in records {
            counts.add(crate::vocab::parse_ip(ip).expect("a value"), n);
        }
        Arc::new(Pane {
            owners: None,
            seq: index,
            start: UNIX_EPOCH + Duration::from_secs(index),
            end: UNIX_EPOCH + Duration::from_secs(index + 1),
            counts: PaneCounts::from(&counts),
            requests: records.iter().map(|(_, n)| u64::from(*n)).sum(),
            skipped: SkipCounts::default(),
            ranges: Vec::new(),
        })
    }

    fn ask(kept: &[Arc<Pane>], grouping: Option<(u8, u8)>, ask: Ask) -> PartReply {
        PartRequest {
            start_ms: 0,
            end_ms: 10_000,
            grouping,
            ask,
            within: None,
            view: None,
        }
        .answer(kept, &MergeCache::default())
    }

    #[test]
    fn parts_give_top_above_counts_and_addresses_of_the_range() {
        let kept = vec![
            pane(0, &[("10.0.0.1", 5), ("10.0.0.2", 1), ("2001:db8::1", 3)]),
            pane(1, &[("10.0.0.1", 1), ("10.0.1.9", 4)]),
        ];
        let top = ask(&kept, None, Ask::Top { k: 2 });
        assert_eq!(top.total_requests, 14);
        assert_eq!(top.distinct_ips, 4);
        assert!(top.exact);
        assert_eq!(
            top.items,
            vec![("10.0.0.1".into(), 6, 1), ("10.0.1.9".into(), 4, 1)]
        );
        let above = ask(&kept, Some((24, 64)), Ask::Above { min: 4 });
        assert_eq!(
            above.items,
            vec![("10.0.0.0/24".into(), 7, 2), ("10.0.1.0/24".into(), 4, 1)]
        );
        let counts = ask(
            &kept,
            None,
            Ask::Counts {
                keys: vec!["2001:db8::1".into(), "192.0.2.1".into()],
            },
        );
        assert_eq!(
            counts.items,
            vec![("2001:db8::1".into(), 3, 1), ("192.0.2.1".into(), 0, 0)]
        );
        let members = ask(
            &kept,
            None,
            Ask::Addresses {
                within: Some(vec!["10.0.0.0/24".into()]),
            },
        );
        assert_eq!(members.addresses, vec!["10.0.0.1", "10.0.0.2"]);
        let ip = ask(
            &kept,
            None,
            Ask::Ip {
                ip: "10.0.0.1".into(),
            },
        );
        assert_eq!(ip.panes, vec![(0, 1000, 5), (1000, 2000, 1)]);
    }

    #[test]
    fn parts_by_owner_give_each_owner_its_requests_and_addresses() {
        let owner = |ip: IpKey| crate::owners::Owner {
            asn: if ip.is_v4() { 64500 } else { 64501 },
            country: crate::vocab::Country::UNKNOWN,
        };
        let owned = |p: Arc<Pane>| {
            let owners = crate::window::PaneOwners::of(&p.counts, owner);
            Arc::new(Pane {
                owners: Some(Arc::new(owners)),
                ..Pane::clone(&p)
            })
        };
        let kept = vec![
            owned(pane(0, &[("10.0.0.1", 5), ("2001:db8::1", 3)])),
            owned(pane(1, &[("10.0.0.1", 1), ("10.0.1.9", 4)])),
        ];
        let by_asn = ask(
            &kept,
            None,
            Ask::Owners {
                group: "asn".into(),
            },
        );
        assert!(by_asn.exact);
        assert_eq!(
            by_asn.owned,
            vec![
                (
                    "AS64500".to_string(),
                    10,
                    vec!["10.0.0.1".to_string(), "10.0.1.9".to_string()]
                ),
                ("AS64501".to_string(), 3, vec!["2001:db8::1".to_string()]),
            ]
        );
        let members = ask(&kept, None, Ask::AsnMembers { asn: 64500 });
        assert_eq!(members.within_count, 10);
        assert_eq!(
            members.items,
            vec![("10.0.0.1".into(), 6, 1), ("10.0.1.9".into(), 4, 1)]
        );
    }

    #[test]
    fn rank_orders_keys_as_addresses_not_as_text() {
        let items = vec![
            ("10.0.0.10".into(), 1, 1),
            ("10.0.0.9".into(), 1, 1),
            ("::1".into(), 2, 1),
        ];
        let ranked = best(items, 3);
        let keys: Vec<&str> = ranked.iter().map(|i| i.0.as_str()).collect();
        assert_eq!(keys, vec!["::1", "10.0.0.9", "10.0.0.10"]);
    }
}
