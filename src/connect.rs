//! Connecting to NATS with every auth option, and refusing servers too old
//! to honour the stream and consumer settings we rely on.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// Oldest server accepted: 2.10 added consumer/stream settings we use
/// (multiple filter subjects, stream metadata); 2.9 silently ignores them.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 10, 0);

/// How to reach and authenticate to NATS.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Comma-separated server URLs, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// `.creds` file (JWT + nkey seed).
    pub creds: Option<PathBuf>,
    /// NKey seed (`SU...`).
    pub nkey: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// CA certificate to trust (PEM).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS (PEM).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Require TLS even if the server does not demand it.
    pub tls_required: bool,
    /// Connection name shown in server monitoring.
    pub name: Option<String>,
}

impl ConnectOptions {
    pub fn new(url: impl Into<String>) -> Self {
        ConnectOptions {
            url: url.into(),
            ..Default::default()
        }
    }

    /// Connect, then check the server version and JetStream.
    pub async fn connect(&self) -> Result<async_nats::Client> {
        let mut o = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5));
        if let Some(name) = &self.name {
            o = o.name(name);
        }
        if let Some(path) = &self.creds {
            o = o.credentials_file(path).await.map_err(|e| {
                Error::new(
                    ErrorKind::Connect,
                    format!("cannot read creds file {}: {e}", path.display()),
                )
            })?;
        }
        if let Some(seed) = &self.nkey {
            o = o.nkey(seed.clone());
        }
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &self.token {
            o = o.token(t.clone());
        }
        if let Some(ca) = &self.tls_ca {
            o = o.add_root_certificates(ca.clone());
        }
        if let (Some(c), Some(k)) = (&self.tls_cert, &self.tls_key) {
            o = o.add_client_certificate(c.clone(), k.clone());
        }
        if self.tls_required {
            o = o.require_tls(true);
        }
        // `nats://a:4222,nats://b:4222`: a seed list, as every NATS client
        // accepts; the client tries them in turn, so one dead seed does not
        // stop a worker from starting.
        let seeds: Vec<&str> = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let client = o.connect(seeds).await.map_err(|e| {
            Error::new(
                ErrorKind::Connect,
                format!("cannot connect to NATS at {}: {e}", redact_urls(&self.url)),
            )
        })?;
        check_server(&client.server_info())?;
        Ok(client)
    }
}

/// `urls` (comma separated) with any password or token replaced by `***`,
/// for error and log lines.
pub fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|u| match u.trim().rsplit_once('@') {
            Some((cred, host)) => {
                let (scheme, userinfo) = cred.split_once("://").unwrap_or(("", cred));
                let user = userinfo.split_once(':').map_or("***", |(user, _)| user);
                let scheme = if scheme.is_empty() {
                    String::new()
                } else {
                    format!("{scheme}://")
                };
                format!("{scheme}{user}:***@{host}")
            }
            None => u.trim().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Refuse servers without JetStream or older than [`MIN_SERVER_VERSION`].
pub fn check_server(info: &async_nats::ServerInfo) -> Result<()> {
    let v = parse_version(&info.version).ok_or_else(|| {
        Error::new(
            ErrorKind::ServerUnsupported,
            format!("cannot read NATS server version {:?}", info.version),
        )
    })?;
    if v < MIN_SERVER_VERSION {
        let (a, b, c) = MIN_SERVER_VERSION;
        return Err(Error::new(
            ErrorKind::ServerUnsupported,
            format!(
                "NATS server {} is too old: jetcode needs {a}.{b}.{c} or newer (older servers silently ignore settings it relies on)",
                info.version
            ),
        ));
    }
    if !info.jetstream {
        return Err(Error::new(
            ErrorKind::ServerUnsupported,
            format!(
                "NATS server {} at {} has JetStream disabled (start it with -js)",
                info.version, info.host
            ),
        ));
    }
    Ok(())
}

fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim_start_matches('v').split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_urls_are_redacted() {
        assert_eq!(
            redact_urls("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(
            redact_urls("nats://jc:s3cret@a:4222, nats://tok@b:4222"),
            "nats://jc:***@a:4222,nats://***:***@b:4222"
        );
        assert_eq!(redact_urls("u:p@h:1"), "u:***@h:1");
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("2.10.22"), Some((2, 10, 22)));
        assert_eq!(parse_version("v2.11.0-RC.1"), Some((2, 11, 0)));
        assert_eq!(parse_version("garbage"), None);
        let mut info = async_nats::ServerInfo {
            version: "2.9.11".into(),
            jetstream: true,
            ..Default::default()
        };
        let e = check_server(&info).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ServerUnsupported);
        assert!(e.to_string().contains("too old"));
        info.version = "2.15.1".into();
        assert!(check_server(&info).is_ok());
        info.jetstream = false;
        assert!(check_server(&info)
            .unwrap_err()
            .to_string()
            .contains("JetStream"));
    }
}
