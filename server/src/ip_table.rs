//! The accessing device's country and IP reputation, from a local table of address blocks
//! (no cloud lookup): `pingid.authentication.accessing.device.country` and `.ip.reputation`.
//!
//! The table is CSV, one block a line: `CIDR,COUNTRY,REPUTATION[,LATITUDE,LONGITUDE]`, where
//! COUNTRY is an ISO 3166-1 alpha-2 code (or empty), REPUTATION is `Low`, `Medium`, `High` (or
//! empty), and the optional LATITUDE and LONGITUDE (degrees, both or neither, may be empty) place
//! the block for policy geovelocity checks; three-column files load as before. Blank lines and
//! lines starting with `#` are skipped. The most specific block containing an address wins.
//!
//! ```text
//! # cidr,country,reputation
//! 203.0.113.0/24,DE,Low
//! 198.51.100.0/24,NL,High
//! 2001:db8::/32,FR,Medium
//! ```

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

/// The IP table could not be read or has a bad line (the message names the line, never its
/// content beyond what was wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IpTableError(pub String);

/// How trustworthy an address is, as the table says (PingID's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpReputation {
    /// Low risk.
    Low,
    /// Medium risk.
    Medium,
    /// High risk.
    High,
}

impl IpReputation {
    /// The attribute's value: `Low`, `Medium` or `High`.
    pub fn as_str(self) -> &'static str {
        match self {
            IpReputation::Low => "Low",
            IpReputation::Medium => "Medium",
            IpReputation::High => "High",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "low" => Some(Self::Low),
            "medium" => Some(Self::Medium),
            "high" => Some(Self::High),
            _ => None,
        }
    }
}

/// What the table knows of one address.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IpFacts {
    /// ISO 3166-1 alpha-2 country code.
    pub country: Option<String>,
    /// Reputation.
    pub reputation: Option<IpReputation>,
    /// Where the block is: (latitude, longitude) in degrees.
    pub location: Option<(f64, f64)>,
}

#[derive(Debug, Clone)]
struct Block {
    net: IpNet,
    facts: IpFacts,
}

/// Address blocks and what is known of them. Empty by default: no attribute is added.
#[derive(Debug, Clone, Default)]
pub struct IpTable {
    /// Most specific first, so the first match wins.
    blocks: Vec<Block>,
}

impl IpTable {
    /// Parses the CSV text; an error names the first bad line (its number, not its content).
    pub fn from_csv(text: &str) -> Result<Self, IpTableError> {
        let mut blocks = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what: &str| IpTableError(format!("IP table line {}: {what}", index + 1));
            let mut parts = line.split(',').map(str::trim);
            let (Some(cidr), Some(country), Some(reputation)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad("expected CIDR,COUNTRY,REPUTATION[,LATITUDE,LONGITUDE]"));
            };
            let location = match (parts.next(), parts.next(), parts.next()) {
                (None, None, None) => None,
                (Some(""), Some(""), None) => None,
                (Some(lat), Some(lon), None) => {
                    let lat: f64 = lat
                        .parse()
                        .map_err(|_| bad("the latitude must be a number of degrees"))?;
                    let lon: f64 = lon
                        .parse()
                        .map_err(|_| bad("the longitude must be a number of degrees"))?;
                    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                        return Err(bad("the location is out of range"));
                    }
                    Some((lat, lon))
                }
                _ => {
                    return Err(bad("expected CIDR,COUNTRY,REPUTATION[,LATITUDE,LONGITUDE]"));
                }
            };
            let net: IpNet = cidr
                .parse()
                .map_err(|_| bad("not an address block such as 203.0.113.0/24"))?;
            let country = if country.is_empty() {
                None
            } else if country.len() == 2 && country.chars().all(|c| c.is_ascii_alphabetic()) {
                Some(country.to_ascii_uppercase())
            } else {
                return Err(bad("the country must be a two-letter ISO 3166-1 code"));
            };
            let reputation = if reputation.is_empty() {
                None
            } else {
                Some(
                    IpReputation::parse(reputation)
                        .ok_or_else(|| bad("the reputation must be Low, Medium or High"))?,
                )
            };
            blocks.push(Block {
                net: net.trunc(),
                facts: IpFacts {
                    country,
                    reputation,
                    location,
                },
            });
        }
        // Longest prefix first; a stable sort keeps the file's order among equals.
        blocks.sort_by_key(|b| std::cmp::Reverse(b.net.prefix_len()));
        Ok(Self { blocks })
    }

    /// Reads and parses a table file.
    pub fn load(path: &Path) -> Result<Self, IpTableError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            IpTableError(format!("cannot read the IP table {}: {e}", path.display()))
        })?;
        Self::from_csv(&text)
    }

    /// How many blocks the table has.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// What the most specific block containing `ip` says, if any (IPv4-mapped IPv6 addresses
    /// are looked up as IPv4).
    pub fn lookup(&self, ip: &str) -> Option<&IpFacts> {
        let addr: IpAddr = ip.trim().parse().ok()?;
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        self.blocks
            .iter()
            .find(|b| b.net.contains(&addr))
            .map(|b| &b.facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_block_wins() {
        let table = IpTable::from_csv(
            "# cidr,country,reputation\n\
             203.0.113.0/24,de,Low\n\
             203.0.113.128/25,DE,high\n\
             \n\
             2001:db8::/32,FR,\n\
             0.0.0.0/0,,Medium\n",
        )
        .unwrap();
        assert_eq!(table.len(), 4);
        let facts = table.lookup("203.0.113.7").unwrap();
        assert_eq!(facts.country.as_deref(), Some("DE"));
        assert_eq!(facts.reputation, Some(IpReputation::Low));
        assert_eq!(
            table.lookup("203.0.113.200").unwrap().reputation,
            Some(IpReputation::High)
        );
        assert_eq!(
            table.lookup("::ffff:203.0.113.200").unwrap().reputation,
            Some(IpReputation::High)
        );
        let v6 = table.lookup("2001:db8::1").unwrap();
        assert_eq!((v6.country.as_deref(), v6.reputation), (Some("FR"), None));
        let other = table.lookup("192.0.2.1").unwrap();
        assert_eq!(
            (other.country.as_deref(), other.reputation),
            (None, Some(IpReputation::Medium))
        );
        assert!(table.lookup("2002::1").is_none());
        assert!(table.lookup("not an address").is_none());
    }

    #[test]
    fn bad_lines_are_named_by_number() {
        for (text, line) in [
            ("10.0.0.0/8,DE\n", 1),
            ("# c\n10.0.0.0/33,DE,Low\n", 2),
            ("10.0.0.0/8,Germany,Low\n", 1),
            ("10.0.0.0/8,DE,Low\n10.0.0.0/8,DE,Risky\n", 2),
            ("10.0.0.0/8,DE,Low,extra\n", 1),
            ("10.0.0.0/8,DE,Low,91,0\n", 1),
            ("10.0.0.0/8,DE,Low,1,2,3\n", 1),
        ] {
            let err = IpTable::from_csv(text).unwrap_err().to_string();
            assert!(err.contains(&format!("line {line}:")), "{err}");
        }
        assert!(IpTable::from_csv("").unwrap().is_empty());
    }

    #[test]
    fn locations_are_optional_columns() {
        let table = IpTable::from_csv(
            "203.0.113.0/24,DE,Low,52.52,13.40\n198.51.100.0/24,US,,,\n192.0.2.0/24,FR,High\n",
        )
        .unwrap();
        assert_eq!(
            table.lookup("203.0.113.1").unwrap().location,
            Some((52.52, 13.40))
        );
        assert_eq!(table.lookup("198.51.100.1").unwrap().location, None);
        assert_eq!(table.lookup("192.0.2.1").unwrap().location, None);
    }
}
