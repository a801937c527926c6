//! Which key a pane's counts fall under for a rule: an address, a network
//! of the rule's prefix, or the address's owner (AS, country); and, for a
//! summarized pane, the network level its counts are read from and how much
//! they may lack.

use super::counts::{Slot, Slots};
use super::file::Key;
use crate::vocab::IpKey;
#[cfg(test)]
use crate::vocab::{Network, Subject};
use crate::window::Pane;
use crate::window::counts::{SUMMARY_PREFIX4, SUMMARY_PREFIX6};

/// The key an address counts under; `None` for the other family, and for
/// owner keys (read from a pane's owners, not from an address). The tests'
/// reference for [`Slots::slot_of_ip`].
#[cfg(test)]
pub(super) fn network_of(key: Key, ip: IpKey) -> Option<Subject> {
    match key {
        Key::Ip => Some(Network::of(ip, 32, 128).into()),
        Key::V4(bits) if ip.is_v4() => Some(Network::of(ip, bits, 128).into()),
        Key::V6(bits) if !ip.is_v4() => Some(Network::of(ip, 32, bits).into()),
        _ => None,
    }
}

/// The most a count by `key` may lack in `pane`: 0 when it is exact; the
/// level's offset when the key is the level's (`ip`, `v4/24`, `v6/64`),
/// else the residual of the level it is read from (its total minus its
/// listed lower bounds), which bounds any key it does not list.
pub(super) fn pane_error(key: Key, pane: &Pane) -> u64 {
    if let Some(kind) = key.owner_kind() {
        // A pane whose owners were not looked up may hold anything.
        return pane
            .owners
            .as_ref()
            .map_or(pane.requests, |o| o.error_bound(kind));
    }
    let Some(s) = pane.counts.summary() else {
        return 0;
    };
    let (v4, bits, level, level_bits, full) = match key {
        Key::Asn | Key::Country => return 0,
        Key::Ip => return s.offset,
        Key::V4(bits) => (true, bits, &s.v4, SUMMARY_PREFIX4, 32),
        Key::V6(bits) => (false, bits, &s.v6, SUMMARY_PREFIX6, 128),
    };
    if bits == level_bits {
        level.error_bound()
    } else if bits < level_bits {
        let listed: u64 = level.iter().map(|(_, b)| b.lower).sum();
        level.total().saturating_sub(listed)
    } else if bits == full {
        s.offset
    } else {
        let listed: u64 = pane
            .counts
            .iter()
            .filter(|(ip, _)| ip.is_v4() == v4)
            .map(|(_, n)| u64::from(n))
            .sum();
        level.total().saturating_sub(listed)
    }
}

/// Calls `f(slot, count)` once for each key of the pane's counts (lower
/// bounds in a summarized pane) by the key kind `slots` holds. A summarized pane is
/// read at its network level for keys at or above it (`v4/24`, `v6/64` and
/// shorter prefixes): a client rotating over a network no address summary
/// lists still counts there.
pub(super) fn for_each_lower(key: Key, slots: Slots, pane: &Pane, mut f: impl FnMut(Slot, u64)) {
    if let Some(kind) = key.owner_kind() {
        for t in pane.owners.iter().flat_map(|o| o.totals(kind)) {
            f(slots.slot(&kind.subject(t.key)), t.count);
        }
        return;
    }
    let level = pane.counts.summary().and_then(|s| match key {
        Key::V4(bits) if bits <= SUMMARY_PREFIX4 => Some(&s.v4),
        Key::V6(bits) if bits <= SUMMARY_PREFIX6 => Some(&s.v6),
        _ => None,
    });
    match level {
        Some(summary) => {
            for (network, bounds) in summary.iter() {
                let (first, _) = network.bounds();
                if let Some(slot) = slots.slot_of_ip(IpKey::from_bits(first)) {
                    f(slot, bounds.lower);
                }
            }
        }
        None => {
            // The counts come in address order, so a network's addresses
            // are neighbours: each network is reported once, summed.
            let mut run: Option<(Slot, u64)> = None;
            for (ip, n) in pane.counts.iter() {
                let Some(slot) = slots.slot_of_ip(ip) else {
                    continue;
                };
                match &mut run {
                    Some((current, sum)) if *current == slot => *sum += u64::from(n),
                    _ => {
                        if let Some((done, sum)) = run.replace((slot, u64::from(n))) {
                            f(done, sum);
                        }
                    }
                }
            }
            if let Some((done, sum)) = run {
                f(done, sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::{SkipCounts, parse_ip};
    use crate::window::{IpMap, PaneCounts};
    use std::time::UNIX_EPOCH;

    #[test]
    fn a_networks_addresses_are_reported_once_summed() {
        let mut counts = IpMap::default();
        for (ip, n) in [
            ("10.0.0.9", 1),
            ("10.0.0.1", 2),
            ("10.0.1.1", 4),
            ("10.0.0.200", 8),
            ("2001:db8::1", 16),
        ] {
            counts.add(parse_ip(ip).expect("ip"), n);
        }
        let pane = Pane {
            owners: None,
            seq: 0,
            start: UNIX_EPOCH,
            end: UNIX_EPOCH,
            counts: PaneCounts::from(&counts),
            requests: 31,
            skipped: SkipCounts::default(),
            ranges: Vec::new(),
        };
        let mut seen = Vec::new();
        let slots = Slots::new(Key::V4(24));
        for_each_lower(Key::V4(24), slots, &pane, |slot, n| {
            seen.push((slots.subject(slot), n))
        });
        let net = |ip: &str| network_of(Key::V4(24), parse_ip(ip).expect("ip")).expect("v4");
        assert_eq!(seen, [(net("10.0.0.0"), 11), (net("10.0.1.0"), 4)]);
        seen.clear();
        let slots = Slots::new(Key::Ip);
        for_each_lower(Key::Ip, slots, &pane, |slot, n| {
            seen.push((slots.subject(slot), n))
        });
        assert_eq!(seen.len(), 5, "every address once: {seen:?}");
        assert_eq!(seen.iter().map(|(_, n)| n).sum::<u64>(), 31);
    }
}
