//! Who is behind the addresses, over the cluster: every instance gives its
//! owners with their requests and addresses in one round, and the answer
//! adds the requests and unites the addresses (one address's records may be
//! counted by several instances). Owners are few, so no threshold rounds
//! are needed for an exact top list.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::fanout::{DEADLINE, Fanout};
use super::part::{Ask, PartRequest};
use super::span::Span;
use crate::owners::OwnerKind;
use crate::query::owners::{AsnMembers, OwnerTrust};
use crate::query::{Grouping, top_networks};
use crate::vocab::{IpKey, Subject, parse_ip};

/// The cluster's owners of one kind over a range.
#[derive(Clone, Debug)]
pub struct Owned {
    pub total_requests: u64,
    pub distinct_ips: u64,
    /// `(key, requests, distinct addresses)`, the top `n` in order.
    pub top: Vec<(u32, u64, u64)>,
    pub owners: usize,
    pub exact: bool,
    pub error_bound: u64,
    pub cluster: super::fanout::ClusterField,
}

/// One AS over the cluster.
#[derive(Clone, Debug)]
pub struct AsnOwned {
    pub members: AsnMembers,
    pub exact: bool,
    pub cluster: super::fanout::ClusterField,
}

impl Fanout {
    /// The `n` owners of `kind` with the most requests over `span`.
    pub async fn owners(&self, span: &Span, kind: OwnerKind, n: usize) -> Owned {
        let until = Instant::now() + DEADLINE;
        let members = &span.members;
        let ask = PartRequest::over(
            span.range,
            None,
            Ask::Owners {
                group: kind.name().to_string(),
            },
        );
        let parts = self.ask_span(span, vec![ask; members.len()], until).await;
        let reached: Vec<bool> = parts.iter().map(Option::is_some).collect();
        let mut per_key: BTreeMap<u32, (u64, BTreeSet<&str>)> = BTreeMap::new();
        let mut everyone: BTreeSet<&str> = BTreeSet::new();
        for part in parts.iter().flatten() {
            for (text, count, addresses) in &part.owned {
                let Some(key) = Subject::parse(text).and_then(|s| kind.key_of_subject(s)) else {
                    continue;
                };
                let entry = per_key.entry(key).or_default();
                entry.0 += count;
                entry.1.extend(addresses.iter().map(String::as_str));
                everyone.extend(addresses.iter().map(String::as_str));
            }
        }
        let mut top: Vec<(u32, u64, u64)> = per_key
            .iter()
            .map(|(k, (c, a))| (*k, *c, a.len() as u64))
            .collect();
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let owners = top.len();
        top.truncate(n);
        let answered = parts.iter().flatten();
        Owned {
            total_requests: answered.clone().map(|p| p.total_requests).sum(),
            distinct_ips: everyone.len() as u64,
            top,
            owners,
            exact: answered.clone().all(|p| p.exact),
            error_bound: answered.map(|p| p.error_bound).sum(),
            cluster: self.field(members, &parts, &reached),
        }
    }

    /// One AS over `span`: its requests, addresses (counts added across
    /// instances), the top `n` of them and of its networks (`/24`, `/64`).
    pub async fn asn(&self, span: &Span, asn: u32, n: usize) -> AsnOwned {
        let until = Instant::now() + DEADLINE;
        let members = &span.members;
        let ask = PartRequest::over(span.range, None, Ask::AsnMembers { asn });
        let parts = self.ask_span(span, vec![ask; members.len()], until).await;
        let reached: Vec<bool> = parts.iter().map(Option::is_some).collect();
        let mut counts: BTreeMap<IpKey, u64> = BTreeMap::new();
        for part in parts.iter().flatten() {
            for (ip, count, _) in &part.items {
                if let Some(ip) = parse_ip(ip) {
                    *counts.entry(ip).or_default() += count;
                }
            }
        }
        let grouping = Grouping {
            prefix4: 24,
            prefix6: 64,
        };
        let (networks, _) = top_networks(counts.iter().map(|(ip, c)| (*ip, *c)), grouping, n);
        let mut top: Vec<(IpKey, u64)> = counts.iter().map(|(ip, c)| (*ip, *c)).collect();
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(n);
        let answered = parts.iter().flatten();
        AsnOwned {
            members: AsnMembers {
                count: answered.clone().map(|p| p.within_count).sum(),
                distinct_ips: counts.len() as u64,
                top,
                networks,
                trust: OwnerTrust::default(),
            },
            exact: answered.clone().all(|p| p.exact),
            cluster: self.field(members, &parts, &reached),
        }
    }
}
