//! The client address as ipstats stores it: a compact, hashable, ordered key.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A client address as a compact, hashable, ordered key.
///
/// IPv4 addresses are held in their IPv4-mapped IPv6 form, and IPv4-mapped
/// IPv6 input (`::ffff:1.2.3.4`, as dual-stack servers log it) is the same
/// client as `1.2.3.4`, so both count under one key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpKey(u128);

const V4_MAPPED_PREFIX: u128 = 0xffff_u128 << 32;
const V4_MAPPED_MASK: u128 = !0xffff_ffff_u128;

impl IpKey {
    pub fn is_v4(self) -> bool {
        self.0 & V4_MAPPED_MASK == V4_MAPPED_PREFIX
    }

    /// The raw 128-bit form, as checkpoints store it.
    pub fn to_bits(self) -> u128 {
        self.0
    }

    pub fn from_bits(bits: u128) -> Self {
        IpKey(bits)
    }

    /// The IPv4 address as a number, when this is one.
    #[inline]
    pub fn v4_bits(self) -> Option<u32> {
        self.is_v4().then_some(self.0 as u32)
    }

    #[inline]
    pub fn from_v4_bits(v4: u32) -> Self {
        IpKey(V4_MAPPED_PREFIX | u128::from(v4))
    }

    pub fn addr(self) -> IpAddr {
        if self.is_v4() {
            IpAddr::V4(Ipv4Addr::from(self.0 as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.0))
        }
    }
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => IpKey(V4_MAPPED_PREFIX | u128::from(u32::from(v4))),
            IpAddr::V6(v6) => IpKey(u128::from(v6)),
        }
    }
}

/// IPv4 before IPv6, each in numeric order.
impl Ord for IpKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (!self.is_v4(), self.0).cmp(&(!other.is_v4(), other.0))
    }
}

impl PartialOrd for IpKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr().fmt(f)
    }
}

impl fmt::Debug for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IpKey({})", self.addr())
    }
}

/// Parses an address the way the API accepts one: IPv4 or IPv6 text.
pub fn parse_ip(text: &str) -> Option<IpKey> {
    IpAddr::from_str(text).ok().map(IpKey::from)
}

/// A network in CIDR form (`10.0.0.0/8`, `2001:db8::/32`); a bare address is
/// the network of that one address. IPv4 networks live in the IPv4-mapped
/// range, as [`IpKey`] holds IPv4 addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Network {
    bits: u128,
    /// Prefix length in the 128-bit space (IPv4 /n is 96 + n).
    prefix: u8,
}

impl Network {
    /// Parses `address[/prefix]`; `None` when either part is invalid or
    /// bits are set past the prefix (`10.0.0.1/8` is refused: write `10.0.0.0/8`).
    pub fn parse(text: &str) -> Option<Network> {
        let (written, network) = Network::read(text)?;
        (network.bits == written.0).then_some(network)
    }

    /// Parses `address[/prefix]` as [`Network::parse`] does, but clears
    /// the bits past the prefix: `10.0.0.1/8` is `10.0.0.0/8`.
    pub fn enclosing(text: &str) -> Option<Network> {
        Network::read(text).map(|(_, network)| network)
    }

    /// The address as written and the network enclosing it.
    fn read(text: &str) -> Option<(IpKey, Network)> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let key = parse_ip(address)?;
        let (max, offset) = if key.is_v4() { (32u8, 96u8) } else { (128, 0) };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|n| *n <= max)?
            }
            Some(_) => return None,
        };
        let network = Network {
            bits: 0,
            prefix: prefix + offset,
        };
        let bits = key.0 & network.mask();
        Some((key, Network { bits, ..network }))
    }

    /// The network of `ip` with `prefix4` bits (IPv4) or `prefix6` bits
    /// (IPv6) kept: `203.0.113.7` with 24 is `203.0.113.0/24`. Prefixes
    /// longer than the family's are cut to it.
    pub fn of(ip: IpKey, prefix4: u8, prefix6: u8) -> Network {
        let prefix = if ip.is_v4() {
            96 + prefix4.min(32)
        } else {
            prefix6.min(128)
        };
        let network = Network { bits: 0, prefix };
        Network {
            bits: ip.0 & network.mask(),
            prefix,
        }
    }

    /// An IPv4 network (in the IPv4-mapped range, prefix 96 or longer).
    pub fn is_v4(self) -> bool {
        IpKey(self.bits).is_v4() && self.prefix >= 96
    }

    /// The prefix length as written (`/24` for an IPv4 /24).
    pub fn prefix_len(self) -> u8 {
        if IpKey(self.bits).is_v4() && self.prefix >= 96 {
            self.prefix - 96
        } else {
            self.prefix
        }
    }

    fn mask(self) -> u128 {
        match self.prefix {
            0 => 0,
            p => u128::MAX << (128 - u32::from(p)),
        }
    }

    /// The network as stored: its first address (128-bit form) and its
    /// prefix length in the 128-bit space.
    pub fn to_parts(self) -> (u128, u8) {
        (self.bits, self.prefix)
    }

    /// A network from [`Network::to_parts`]; `None` when the prefix is too
    /// long or bits are set past it.
    pub fn from_parts(bits: u128, prefix: u8) -> Option<Network> {
        let network = Network { bits, prefix };
        (prefix <= 128 && bits & !network.mask() == 0).then_some(network)
    }

    /// The first and the last address of the network (128-bit form).
    pub fn bounds(self) -> (u128, u128) {
        (self.bits, self.bits | !self.mask())
    }

    pub fn contains(self, ip: IpKey) -> bool {
        ip.0 & self.mask() == self.bits
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = IpKey(self.bits);
        let prefix = if key.is_v4() && self.prefix >= 96 {
            self.prefix - 96
        } else {
            self.prefix
        };
        write!(f, "{key}/{prefix}")
    }
}

#[cfg(test)]
mod network_tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses_and_only_those() {
        let net = Network::parse("10.0.0.0/8").expect("v4");
        assert!(net.contains(parse_ip("10.200.3.4").expect("ip")));
        assert!(!net.contains(parse_ip("11.0.0.1").expect("ip")));
        assert!(
            !net.contains(parse_ip("::a00:1").expect("ip")),
            "not the v6 form"
        );
        let one = Network::parse("192.0.2.7").expect("bare address");
        assert!(one.contains(parse_ip("::ffff:192.0.2.7").expect("mapped")));
        assert!(!one.contains(parse_ip("192.0.2.8").expect("ip")));
        let v6 = Network::parse("2001:db8::/32").expect("v6");
        assert!(v6.contains(parse_ip("2001:db8:1::9").expect("ip")));
        assert!(!v6.contains(parse_ip("2001:db9::").expect("ip")));
        assert!(
            Network::parse("0.0.0.0/0")
                .expect("all v4")
                .contains(parse_ip("8.8.8.8").expect("ip"))
        );
        assert_eq!(v6.to_string(), "2001:db8::/32");
        assert_eq!(net.to_string(), "10.0.0.0/8");
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "x/8",
            "::/129",
        ] {
            assert_eq!(Network::parse(bad), None, "{bad}");
        }
    }
}
