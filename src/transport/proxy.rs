//! HTTP CONNECT proxies, as corporate networks require: a device's TCP connection (to 8883
//! or 443) is tunnelled through `http://[user:password@]host:port`, and TLS runs inside the
//! tunnel, end to end with the real server, so the proxy sees neither keys nor tokens.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most a proxy's answer to CONNECT may take before the blank line (status line and
/// headers); more is refused rather than buffered.
const MAX_ANSWER: usize = 16 * 1024;

/// An HTTP proxy that tunnels with CONNECT.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Proxy {
    /// The proxy's host name or address.
    pub host: String,
    /// The proxy's port (80, HTTP's, when the URL names none).
    pub port: u16,
    /// `Proxy-Authorization` (Basic), from the URL's user and password; a secret.
    authorization: Option<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl TryFrom<String> for Proxy {
    type Error = String;

    fn try_from(url: String) -> Result<Self, String> {
        Proxy::parse(&url)
    }
}

impl Proxy {
    /// Reads `http://[user[:password]@]host[:port][/]`. Only plain `http://` proxies are
    /// served (the tunnel's content is TLS already); anything else is refused.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("proxy {url:?}: only http:// proxies (HTTP CONNECT) are supported")
        })?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#']) {
            return Err(format!("proxy {url:?}: expected http://host:port"));
        }
        let (credentials, address) = match authority.rsplit_once('@') {
            Some((credentials, address)) => (Some(credentials), address),
            None => (None, authority),
        };
        let port_of = |port: &str| {
            port.parse::<u16>()
                .map_err(|_| format!("proxy {url:?}: {port:?} is not a port"))
        };
        let (host, port) = if let Some(bracketed) = address.strip_prefix('[') {
            // An IPv6 address: [::1] or [::1]:3128.
            match bracketed.split_once(']') {
                Some((host, "")) => (host, 80),
                Some((host, port)) => match port.strip_prefix(':') {
                    Some(port) => (host, port_of(port)?),
                    None => return Err(format!("proxy {url:?}: expected http://host:port")),
                },
                None => return Err(format!("proxy {url:?}: an unclosed [")),
            }
        } else {
            match address.split_once(':') {
                Some((host, port)) => (host, port_of(port)?),
                None => (address, 80),
            }
        };
        if host.is_empty() {
            return Err(format!("proxy {url:?}: no host"));
        }
        let authorization = credentials
            .map(|credentials| {
                let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
                let user = crate::sas::url_decode(user)
                    .map_err(|_| format!("proxy {url:?}: the user name is not URL-encoded"))?;
                let password = crate::sas::url_decode(password)
                    .map_err(|_| format!("proxy {url:?}: the password is not URL-encoded"))?;
                Ok::<_, String>(format!(
                    "Basic {}",
                    BASE64.encode(format!("{user}:{password}"))
                ))
            })
            .transpose()?;
        Ok(Proxy {
            host: host.to_string(),
            port,
            authorization,
        })
    }

    /// Opens a tunnel to `host:port` through the proxy: the TCP stream, past the proxy's
    /// `200` answer, ready for TLS.
    pub async fn tunnel(&self, host: &str, port: u16) -> std::io::Result<TcpStream> {
        let mut stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        let _ = stream.set_nodelay(true);
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(authorization) = &self.authorization {
            request.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        // Read byte by byte up to the blank line: whatever follows belongs to TLS.
        let mut answer = Vec::with_capacity(256);
        while !answer.ends_with(b"\r\n\r\n") {
            if answer.len() >= MAX_ANSWER {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the proxy's answer to CONNECT is too long",
                ));
            }
            let byte = stream.read_u8().await?;
            answer.push(byte);
        }
        let status_line = answer
            .split(|b| *b == b'\n')
            .next()
            .map(|line| String::from_utf8_lossy(line).trim().to_string())
            .unwrap_or_default();
        let status = status_line.split_whitespace().nth(1).unwrap_or("");
        if !(status.len() == 3 && status.starts_with('2')) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("the proxy refused the tunnel to {target}: {status_line}"),
            ));
        }
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_parse_or_are_refused() {
        let plain = Proxy::parse("http://proxy.corp:3128").unwrap();
        assert_eq!((plain.host.as_str(), plain.port), ("proxy.corp", 3128));
        assert!(plain.authorization.is_none());
        let with_user = Proxy::parse("http://me:p%40ss@10.0.0.1:8080/").unwrap();
        assert_eq!(
            (with_user.host.as_str(), with_user.port),
            ("10.0.0.1", 8080)
        );
        assert_eq!(
            with_user.authorization.as_deref(),
            Some(format!("Basic {}", BASE64.encode("me:p@ss")).as_str())
        );
        assert!(!format!("{with_user:?}").contains("Basic"));
        assert_eq!(Proxy::parse("http://[::1]:9").unwrap().host, "::1");
        assert_eq!(Proxy::parse("http://proxy").unwrap().port, 80);
        for bad in [
            "https://p:1",
            "socks5://p:1",
            "http://",
            "http://p:x",
            "http://p:1/path",
            "p:1",
        ] {
            assert!(Proxy::parse(bad).is_err(), "{bad}");
        }
    }
}
