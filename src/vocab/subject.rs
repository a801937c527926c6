//! What a count is about beyond an address or a network: the autonomous
//! system or the country behind it ([`Subject`]), as answers, rules and
//! decisions write it (`AS16509`, `DE`).

use std::fmt;

use super::Network;

/// A country as ISO 3166-1 alpha-2 writes it; `--` when a database does not
/// know the address (or none is loaded).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    pub const UNKNOWN: Country = Country(*b"--");

    /// Two ASCII letters (upper-cased), or `--`.
    pub fn parse(text: &str) -> Option<Country> {
        match text.as_bytes() {
            b"--" => Some(Country::UNKNOWN),
            &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        // Always two ASCII bytes (see `parse`).
        std::str::from_utf8(&self.0).unwrap_or("--")
    }

    /// A number in 0..65536, as packed keys hold it.
    pub fn to_bits(self) -> u16 {
        u16::from_be_bytes(self.0)
    }

    pub fn from_bits(bits: u16) -> Country {
        Country::parse(std::str::from_utf8(&bits.to_be_bytes()).unwrap_or("--"))
            .unwrap_or(Country::UNKNOWN)
    }
}

impl Default for Country {
    fn default() -> Self {
        Country::UNKNOWN
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Country({})", self.as_str())
    }
}

/// What a count is about: an address or network, an autonomous system
/// (`AS16509`; 0 when the database does not know the address) or a country.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    Net(Network),
    Asn(u32),
    Country(Country),
}

impl Subject {
    /// `AS16509`, `DE`, a network in CIDR form or an address.
    pub fn parse(text: &str) -> Option<Subject> {
        if let Some(n) = text.strip_prefix("AS").or_else(|| text.strip_prefix("as")) {
            return n
                .parse::<u32>()
                .ok()
                .filter(|_| n.bytes().all(|b| b.is_ascii_digit()))
                .map(Subject::Asn);
        }
        if let Some(network) = Network::parse(text) {
            return Some(Subject::Net(network));
        }
        Country::parse(text).map(Subject::Country)
    }

    pub fn network(self) -> Option<Network> {
        match self {
            Subject::Net(n) => Some(n),
            _ => None,
        }
    }
}

impl From<Network> for Subject {
    fn from(n: Network) -> Self {
        Subject::Net(n)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Net(n) => n.fmt(f),
            Subject::Asn(a) => write!(f, "AS{a}"),
            Subject::Country(c) => c.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_read_back_as_written() {
        for text in ["AS16509", "AS0", "DE", "--", "10.0.0.0/8", "2001:db8::/32"] {
            let subject = Subject::parse(text).expect(text);
            assert_eq!(subject.to_string(), text);
        }
        assert_eq!(
            Subject::parse("de"),
            Some(Subject::Country(Country(*b"DE")))
        );
        for bad in ["AS", "AS-1", "AS1x", "D", "DEU", "1D", "AS99999999999"] {
            assert_eq!(Subject::parse(bad), None, "{bad}");
        }
        let de = Country::parse("DE").expect("a country");
        assert_eq!(Country::from_bits(de.to_bits()), de);
    }
}
