//! An aggregate's counts by key, each key held as small as its kind
//! allows: a network (or address) by its first address in an [`IpMap`] (4
//! bytes for IPv4, 16 for IPv6), an owner (AS, country) as it is. The
//! prefix is the aggregate's, so it is not stored: an IPv4 entry takes 16
//! bytes instead of the 64 a [`Subject`] key took, and hashes in one step.

use rustc_hash::FxHashMap;

use super::file::Key;
use crate::vocab::{IpKey, Network, Subject};
use crate::window::IpMap;

/// A key as the table holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Slot {
    /// A network of the kind's prefix, by its first address.
    Net(IpKey),
    Other(Subject),
}

/// How one key kind's keys are held: which families count and at which
/// prefix lengths.
#[derive(Clone, Copy, Debug)]
pub(super) struct Slots {
    /// Whether addresses of each family count (owner kinds: neither).
    counts_v4: bool,
    counts_v6: bool,
    /// The prefix lengths: IPv4 (0–32), IPv6 (0–128).
    v4_prefix: u8,
    v6_prefix: u8,
}

impl Slots {
    pub(super) fn new(key: Key) -> Self {
        let (v4_prefix, v6_prefix) = match key {
            Key::V4(bits) => (bits.min(32), 128),
            Key::V6(bits) => (32, bits.min(128)),
            Key::Ip | Key::Asn | Key::Country => (32, 128),
        };
        Slots {
            counts_v4: matches!(key, Key::Ip | Key::V4(_)),
            counts_v6: matches!(key, Key::Ip | Key::V6(_)),
            v4_prefix,
            v6_prefix,
        }
    }

    /// The slot of the network an address counts under (as
    /// [`super::keys::network_of`] makes it, without making it); `None`
    /// where the key kind does not count the address.
    #[inline]
    pub(super) fn slot_of_ip(self, ip: IpKey) -> Option<Slot> {
        match ip.v4_bits() {
            Some(v4) => self
                .counts_v4
                .then(|| Slot::Net(IpKey::from_v4_bits(v4 & mask32(self.v4_prefix)))),
            None => self
                .counts_v6
                .then(|| Slot::Net(IpKey::from_bits(ip.to_bits() & mask128(self.v6_prefix)))),
        }
    }

    /// Where a subject is held: a network of this kind's prefix by its
    /// bits, anything else as it is.
    pub(super) fn slot(self, subject: &Subject) -> Slot {
        if let Subject::Net(network) = subject {
            let (bits, prefix) = network.to_parts();
            let first = IpKey::from_bits(bits);
            let kind_prefix = if first.is_v4() {
                96 + self.v4_prefix
            } else {
                self.v6_prefix
            };
            if first.is_v4() == network.is_v4() && prefix == kind_prefix {
                return Slot::Net(first);
            }
        }
        Slot::Other(*subject)
    }

    /// The subject a slot holds: the inverse of [`Slots::slot`].
    pub(super) fn subject(self, slot: Slot) -> Subject {
        match slot {
            Slot::Net(first) => Network::of(first, self.v4_prefix, self.v6_prefix).into(),
            Slot::Other(subject) => subject,
        }
    }
}

/// Counts by key for one key kind; no key is held at 0.
#[derive(Clone, Debug)]
pub(super) struct KeyCounts {
    pub(super) slots: Slots,
    nets: IpMap<u64>,
    other: FxHashMap<Subject, u64>,
}

impl KeyCounts {
    pub(super) fn new(key: Key) -> Self {
        KeyCounts {
            slots: Slots::new(key),
            nets: IpMap::default(),
            other: FxHashMap::default(),
        }
    }

    /// Counts made elsewhere, by subject.
    pub(super) fn from_subjects(key: Key, counts: FxHashMap<Subject, u64>) -> Self {
        let mut table = KeyCounts::new(key);
        for (subject, n) in counts {
            table.add(table.slots.slot(&subject), n);
        }
        table
    }

    pub(super) fn get(&self, subject: &Subject) -> Option<u64> {
        match self.slots.slot(subject) {
            Slot::Net(first) => self.nets.get(first),
            Slot::Other(k) => self.other.get(&k).copied(),
        }
    }

    /// Adds `n`; the count before.
    #[inline]
    pub(super) fn add(&mut self, slot: Slot, n: u64) -> u64 {
        match slot {
            Slot::Net(first) => self.nets.add(first, n),
            Slot::Other(k) => {
                let count = self.other.entry(k).or_insert(0);
                let before = *count;
                *count += n;
                before
            }
        }
    }

    /// Takes `n` away (not below 0; a key at 0 is removed); the count
    /// after, `None` for a key not held.
    #[inline]
    pub(super) fn subtract(&mut self, slot: Slot, n: u64) -> Option<u64> {
        match slot {
            Slot::Net(first) => self.nets.subtract(first, n),
            Slot::Other(k) => {
                let count = self.other.get_mut(&k)?;
                *count = count.saturating_sub(n);
                let after = *count;
                if after == 0 {
                    self.other.remove(&k);
                }
                Some(after)
            }
        }
    }

    /// Every key and its count, by subject.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (Subject, u64)> + '_ {
        let slots = self.slots;
        let nets = self
            .nets
            .iter()
            .map(move |(first, n)| (slots.subject(Slot::Net(first)), n));
        let other = self.other.iter().map(|(k, n)| (*k, *n));
        nets.chain(other)
    }
}

/// The top `prefix` bits of 32.
fn mask32(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// The top `prefix` bits of 128.
fn mask128(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => u128::MAX << (128 - u32::from(p.min(128))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::keys::network_of;
    use proptest::prelude::*;

    fn kinds() -> Vec<Key> {
        let mut kinds = vec![Key::Ip, Key::Asn, Key::Country];
        kinds.extend([0, 1, 8, 16, 24, 31, 32].map(Key::V4));
        kinds.extend([0, 1, 32, 48, 64, 96, 127, 128].map(Key::V6));
        kinds
    }

    proptest! {
        /// An address's slot is its network's, and a slot gives back the
        /// very subject it was made from, for every key kind and address.
        #[test]
        fn slots_are_the_networks_of_the_key_kind(
            v4 in any::<u32>(),
            v6 in any::<u128>(),
        ) {
            for key in kinds() {
                let table = Slots::new(key);
                for ip in [IpKey::from_v4_bits(v4), IpKey::from_bits(v6)] {
                    let subject = network_of(key, ip);
                    prop_assert_eq!(table.slot_of_ip(ip), subject.map(|s| table.slot(&s)), "{:?} {}", key, ip);
                    if let Some(subject) = subject {
                        prop_assert_eq!(table.subject(table.slot(&subject)), subject);
                    }
                }
            }
        }
    }

    #[test]
    fn a_subject_of_another_kind_is_held_apart_and_given_back_as_it_is() {
        let table = Slots::new(Key::V4(24));
        let slash16: Subject = Network::parse("10.1.0.0/16").expect("net").into();
        let slash24: Subject = Network::parse("10.1.0.0/24").expect("net").into();
        assert_eq!(table.slot(&slash16), Slot::Other(slash16));
        assert_eq!(
            table.slot(&slash24),
            Slot::Net(IpKey::from_v4_bits(0x0a01_0000))
        );
        let asn = Subject::Asn(64500);
        assert_eq!(table.subject(table.slot(&asn)), asn);
    }

    #[test]
    fn counts_add_subtract_and_leave_no_key_at_zero() {
        let mut table = KeyCounts::new(Key::Ip);
        let slots = table.slots;
        let a = slots
            .slot_of_ip(IpKey::from_v4_bits(0x0a00_0001))
            .expect("v4");
        let b = slots
            .slot_of_ip(IpKey::from_bits(0x2001_0db8 << 96 | 1))
            .expect("v6");
        assert_eq!(table.add(a, 3), 0);
        assert_eq!(table.add(a, 2), 3);
        assert_eq!(table.add(b, 1), 0);
        assert_eq!(table.subtract(a, 4), Some(1));
        assert_eq!(table.subtract(b, 7), Some(0));
        assert_eq!(table.subtract(b, 1), None);
        let subject = slots.subject(a);
        assert_eq!(table.get(&subject), Some(1));
        assert_eq!(table.iter().collect::<Vec<_>>(), vec![(subject, 1)]);
    }
}
