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
