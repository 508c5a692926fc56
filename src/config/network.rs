//! IP networks in CIDR notation (`10.0.0.0/8`, `fd00::/8`): the sources trusted to send a PROXY
//! protocol header (`[listen] proxy_protocol_from`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One network: an address whose bits past `prefix` are zero, and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNetwork {
    /// An IPv4 network, as generated code writes one.
    pub const fn v4(octets: [u8; 4], prefix: u8) -> IpNetwork {
        let [a, b, c, d] = octets;
        IpNetwork {
            addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    /// An IPv6 network, as generated code writes one.
    pub const fn v6(segments: [u16; 8], prefix: u8) -> IpNetwork {
        let [a, b, c, d, e, f, g, h] = segments;
        IpNetwork {
            addr: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix,
        }
    }

    /// Parses `address/prefix` (or a bare address, a network of one host). The address must have
    /// no bits set past the prefix: `10.0.0.1/8` is more likely a typo than a network.
    pub fn parse(text: &str) -> Result<IpNetwork, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = address
            .parse()
            .map_err(|_| format!("`{address}` is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(prefix) if prefix <= max => prefix,
                _ => {
                    return Err(format!(
                        "prefix `/{prefix}` is not a number from 0 to {max}"
                    ))
                }
            },
        };
        let network = IpNetwork { addr, prefix };
        let masked = network.masked();
        if masked != addr {
            return Err(format!(
                "`{text}` has host bits set past the /{prefix} prefix (the network is {masked}/{prefix})"
            ));
        }
        Ok(network)
    }

    /// Whether `ip` is inside this network. An IPv4 address reached through an IPv6 listener
    /// (`::ffff:10.1.2.3`) counts as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                masked_bits(u32::from(ip).into(), 32, self.prefix)
                    == masked_bits(u32::from(network).into(), 32, self.prefix)
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                masked_bits(u128::from(ip), 128, self.prefix)
                    == masked_bits(u128::from(network), 128, self.prefix)
            }
            _ => false,
        }
    }

    fn masked(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(addr) => {
                let bits = masked_bits(u32::from(addr).into(), 32, self.prefix);
                IpAddr::V4(Ipv4Addr::from(u32::try_from(bits).unwrap_or(0)))
            }
            IpAddr::V6(addr) => IpAddr::V6(Ipv6Addr::from(masked_bits(
                u128::from(addr),
                128,
                self.prefix,
            ))),
        }
    }
}

/// `bits` (an address `width` bits wide) with everything past the first `prefix` bits cleared.
fn masked_bits(bits: u128, width: u8, prefix: u8) -> u128 {
    let host_bits = u32::from(width.saturating_sub(prefix));
    let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
    bits & mask
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Whether `ip` is inside any of `networks`.
pub fn any_contains(networks: &[IpNetwork], ip: IpAddr) -> bool {
    networks.iter().any(|network| network.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches_ipv4() {
        let network = IpNetwork::parse("10.0.0.0/8").unwrap();
        assert_eq!(network, IpNetwork::v4([10, 0, 0, 0], 8));
        assert!(network.contains("10.200.3.4".parse().unwrap()));
        assert!(network.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!network.contains("11.0.0.1".parse().unwrap()));
        assert!(!network.contains("::1".parse().unwrap()));
        let all = IpNetwork::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let host = IpNetwork::parse("127.0.0.1").unwrap();
        assert_eq!(host.prefix, 32);
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn parses_and_matches_ipv6() {
        let network = IpNetwork::parse("fd00::/8").unwrap();
        assert_eq!(network, IpNetwork::v6([0xfd00, 0, 0, 0, 0, 0, 0, 0], 8));
        assert!(network.contains("fdab::1".parse().unwrap()));
        assert!(!network.contains("fe80::1".parse().unwrap()));
        assert!(!network.contains("10.0.0.1".parse().unwrap()));
        assert!(IpNetwork::parse("::/0")
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn refuses_bad_networks() {
        for bad in [
            "10.0.0/8",
            "10.0.0.0/33",
            "10.0.0.0/x",
            "fd00::/129",
            "10.0.0.1/8",
            "",
        ] {
            assert!(IpNetwork::parse(bad).is_err(), "{bad}");
        }
        assert!(IpNetwork::parse("10.0.0.1/8")
            .unwrap_err()
            .contains("10.0.0.0/8"));
    }
}
