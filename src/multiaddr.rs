//! The small subset of multiaddrs a peer listens on or dials over HTTP:
//! `/ip4/<addr>/tcp/<port>`, `/ip6/<addr>/tcp/<port>` and `/dns[46]/<host>/tcp/<port>`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Why a multiaddr could not be used as an HTTP endpoint.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid multiaddress {addr:?}: {reason}")]
pub struct MultiaddrError {
    addr: String,
    reason: &'static str,
}

/// A TCP endpoint named by a multiaddr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpMultiaddr {
    /// IP literal or DNS name.
    pub host: String,
    /// TCP port.
    pub port: u16,
    is_ip6: bool,
}

impl TcpMultiaddr {
    /// Parses `/ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>`.
    pub fn parse(s: &str) -> Result<Self, MultiaddrError> {
        let err = |reason| MultiaddrError {
            addr: s.to_string(),
            reason,
        };
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() != 5 || !parts[0].is_empty() {
            return Err(err("expected /<proto>/<host>/tcp/<port>"));
        }
        let (proto, host, tcp, port) = (parts[1], parts[2], parts[3], parts[4]);
        if tcp != "tcp" {
            return Err(err("only tcp transports are supported"));
        }
        let port: u16 = port.parse().map_err(|_| err("bad tcp port"))?;
        let is_ip6 = match proto {
            "ip4" => {
                host.parse::<std::net::Ipv4Addr>()
                    .map_err(|_| err("bad ip4 address"))?;
                false
            }
            "ip6" => {
                host.parse::<std::net::Ipv6Addr>()
                    .map_err(|_| err("bad ip6 address"))?;
                true
            }
            "dns" | "dns4" | "dns6" if !host.is_empty() => false,
            _ => return Err(err("unsupported protocol")),
        };
        Ok(TcpMultiaddr {
            host: host.to_string(),
            port,
            is_ip6,
        })
    }

    /// The socket address to bind, when the host is an IP literal.
    pub fn socket_addr(&self) -> Result<SocketAddr, MultiaddrError> {
        let ip: IpAddr = self.host.parse().map_err(|_| MultiaddrError {
            addr: self.to_string(),
            reason: "cannot listen on a DNS name",
        })?;
        Ok(SocketAddr::new(ip, self.port))
    }

    /// `host:port` as used in an HTTP URL authority.
    pub fn authority(&self) -> String {
        if self.is_ip6 {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `http://host:port` followed by `path`, parsed once for callers that
    /// build many URLs from it (a DNS name that is no valid URL host is refused).
    pub fn http_url(&self, path: &str) -> Result<url::Url, MultiaddrError> {
        url::Url::parse(&format!("http://{}{path}", self.authority())).map_err(|_| MultiaddrError {
            addr: self.to_string(),
            reason: "not a valid HTTP host",
        })
    }

    /// The multiaddr of a bound socket address.
    pub fn from_socket_addr(addr: SocketAddr) -> Self {
        TcpMultiaddr {
            host: addr.ip().to_string(),
            port: addr.port(),
            is_ip6: addr.is_ipv6(),
        }
    }
}

impl fmt::Display for TcpMultiaddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = if self.is_ip6 {
            "ip6"
        } else if self.host.parse::<IpAddr>().is_ok() {
            "ip4"
        } else {
            "dns"
        };
        write!(f, "/{proto}/{}/tcp/{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let m = TcpMultiaddr::parse("/ip4/127.0.0.1/tcp/9095").unwrap();
        assert_eq!(m.authority(), "127.0.0.1:9095");
        assert_eq!(m.to_string(), "/ip4/127.0.0.1/tcp/9095");
        let m = TcpMultiaddr::parse("/ip6/::1/tcp/5001").unwrap();
        assert_eq!(m.authority(), "[::1]:5001");
        let m = TcpMultiaddr::parse("/dns4/localhost/tcp/5001").unwrap();
        assert_eq!(m.authority(), "localhost:5001");
        assert!(m.socket_addr().is_err());
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "127.0.0.1:5001",
            "/ip4/127.0.0.1/udp/1",
            "/ip4/300.0.0.1/tcp/1",
            "/ip4/127.0.0.1/tcp/99999",
            "/unix/tmp/sock",
        ] {
            assert!(TcpMultiaddr::parse(bad).is_err(), "{bad}");
        }
    }
}
