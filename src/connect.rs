//! Connecting to NATS with every auth option, and refusing servers too old
//! to honour the stream and consumer settings we rely on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// Oldest server accepted: 2.10 added consumer/stream settings we use
/// (multiple filter subjects, stream metadata); 2.9 silently ignores them.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 10, 0);

/// How to reach and authenticate to NATS. Its `Debug` shows no secret.
#[derive(Clone, Default)]
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

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "***");
        f.debug_struct("ConnectOptions")
            .field("url", &redact_urls(&self.url))
            .field("creds", &self.creds)
            .field("nkey", &hidden(&self.nkey))
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_required", &self.tls_required)
            .field("name", &self.name)
            .finish()
    }
}

impl ConnectOptions {
    pub fn new(url: impl Into<String>) -> Self {
        ConnectOptions {
            url: url.into(),
            ..Default::default()
        }
    }

    /// Connect, then check the server version and JetStream.
    ///
    /// Credentials in the URL (`nats://user:password@host:4222`, or
    /// `nats://token@host:4222`), percent-encoded as in any URL, are used
    /// unless an explicit option (creds, nkey, user and password, token)
    /// is given: explicit options win. No error or log line shows a secret.
    pub async fn connect(&self) -> Result<async_nats::Client> {
        // Two TLS crypto providers are linked in (NATS uses ring, the S3
        // client aws-lc-rs); rustls panics at a TLS handshake unless the
        // process names one. Installing it again is a harmless no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let seeds = Seeds::parse(&self.url)?;
        let lost = Arc::new(AtomicBool::new(false));
        let mut o = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| log_event(lost.clone(), event));
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
        let explicit = self.creds.is_some()
            || self.nkey.is_some()
            || self.token.is_some()
            || (self.user.is_some() && self.password.is_some());
        match (&self.user, &self.password) {
            (Some(u), Some(p)) => o = o.user_and_password(u.clone(), p.clone()),
            (Some(_), None) | (None, Some(_)) if !explicit && seeds.auth.is_none() => {
                return Err(Error::new(
                    ErrorKind::Connect,
                    "a NATS user needs a password and a password needs a user (--user with --password)",
                ));
            }
            _ => {}
        }
        if let Some(t) = &self.token {
            o = o.token(t.clone());
        }
        if !explicit {
            match &seeds.auth {
                Some(UrlAuth::UserPassword(u, p)) => o = o.user_and_password(u.clone(), p.clone()),
                Some(UrlAuth::Token(t)) => o = o.token(t.clone()),
                None => {}
            }
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
        // stop a worker from starting. The seeds carry no credentials: those
        // went to the options above.
        let client = o.connect(seeds.urls.clone()).await.map_err(|e| {
            use async_nats::ConnectErrorKind as K;
            let anonymous = !explicit && seeds.auth.is_none();
            let why = match e.kind() {
                K::AuthorizationViolation if anonymous => "authorization violation (the server wants credentials: --user/--password, --token, --creds, --nkey or nats://user:password@host)".to_string(),
                K::AuthorizationViolation => "authorization violation (credentials refused)".to_string(),
                K::Tls | K::Io if e.to_string().to_lowercase().contains("certificate") => {
                    let text = e.to_string();
                    let hint = if text.contains("CertificateRequired") {
                        " (the server wants a client certificate: --tls-cert and --tls-key)"
                    } else if self.tls_ca.is_none() {
                        " (is the server's certificate signed by a CA this machine trusts? --tls-ca names one)"
                    } else {
                        ""
                    };
                    format!(
                        "TLS handshake failed: {}{hint}",
                        redact(text.trim_start_matches("IO error: "))
                    )
                }
                _ => redact(&e.to_string()),
            };
            Error::new(
                ErrorKind::Connect,
                format!("cannot connect to NATS at {}: {why}", redact_urls(&self.url)),
            )
        })?;
        check_server(&client.server_info())?;
        Ok(client)
    }
}

/// Credentials found in the URL's userinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

/// The seed list with the credentials taken out of the URLs.
#[derive(Debug, PartialEq, Eq)]
struct Seeds {
    urls: Vec<String>,
    auth: Option<UrlAuth>,
}

impl Seeds {
    fn parse(list: &str) -> Result<Seeds> {
        let mut urls = Vec::new();
        let mut auth: Option<UrlAuth> = None;
        for url in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let (bare, found) = split_userinfo(url)?;
            if let Some(found) = found {
                if auth.as_ref().is_some_and(|a| *a != found) {
                    return Err(Error::new(
                        ErrorKind::Connect,
                        format!(
                            "the NATS URLs {} carry different credentials; give one set (or --user/--password)",
                            redact_urls(list)
                        ),
                    ));
                }
                auth = Some(found);
            }
            urls.push(bare);
        }
        Ok(Seeds { urls, auth })
    }
}

/// `scheme://userinfo@host:port` -> (`scheme://host:port`, credentials).
/// A userinfo of `user:password` is a user and password, a lone `token` a
/// token, as in every NATS client.
fn split_userinfo(url: &str) -> Result<(String, Option<UrlAuth>)> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return Ok((url.to_string(), None));
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| {
                Error::new(
                    ErrorKind::Connect,
                    format!(
                        "the credentials in NATS URL {} are not valid UTF-8 once percent-decoded",
                        redact_urls(url)
                    ),
                )
            })
    };
    let auth = match userinfo.split_once(':') {
        Some((u, p)) => UrlAuth::UserPassword(decode(u)?, decode(p)?),
        None => UrlAuth::Token(decode(userinfo)?),
    };
    let bare = match scheme {
        Some(s) => format!("{s}://{host}{tail}"),
        None => format!("{host}{tail}"),
    };
    Ok((bare, Some(auth)))
}

/// Log what happens to a live connection once, in our words: losing and
/// regaining the server, and errors the server sends (a permissions
/// violation names the subject a user may not use). Connection attempts
/// themselves are reported by [`ConnectOptions::connect`]'s error.
/// `lost` remembers a disconnect, so only a reconnect is logged.
async fn log_event(lost: Arc<AtomicBool>, event: async_nats::Event) {
    match event {
        async_nats::Event::Disconnected => {
            lost.store(true, Ordering::Relaxed);
            tracing::warn!("disconnected from NATS; reconnecting");
        }
        async_nats::Event::Connected if lost.swap(false, Ordering::Relaxed) => {
            tracing::info!("reconnected to NATS");
        }
        async_nats::Event::ServerError(e) => {
            tracing::warn!("NATS server error: {}", redact(&e.to_string()))
        }
        async_nats::Event::ClientError(e) => {
            tracing::warn!("NATS client error: {}", redact(&e.to_string()))
        }
        _ => {}
    }
}

/// `text` with the secret of any URL in it (`scheme://user:secret@host`)
/// replaced by `***`.
pub fn redact(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            if word.contains("://") && word.contains('@') {
                redact_urls(word)
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
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
    fn url_credentials_are_taken_out_of_the_seeds() {
        let s = Seeds::parse("nats://producer:p%40ss%3Aw0rd@127.0.0.1:4222").unwrap();
        assert_eq!(s.urls, ["nats://127.0.0.1:4222"]);
        assert_eq!(
            s.auth,
            Some(UrlAuth::UserPassword("producer".into(), "p@ss:w0rd".into()))
        );

        let s = Seeds::parse("tls://t0k%2Fen@a:4222, tls://t0k%2Fen@b:4222").unwrap();
        assert_eq!(s.urls, ["tls://a:4222", "tls://b:4222"]);
        assert_eq!(s.auth, Some(UrlAuth::Token("t0k/en".into())));

        let s = Seeds::parse("u:p@h:1,nats://h2:2").unwrap();
        assert_eq!(s.urls, ["h:1", "nats://h2:2"]);
        assert_eq!(s.auth, Some(UrlAuth::UserPassword("u".into(), "p".into())));

        let s = Seeds::parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!(s.urls, ["nats://127.0.0.1:4222"]);
        assert_eq!(s.auth, None);

        // An @ after the authority is not userinfo.
        let s = Seeds::parse("ws://h:80/path@x").unwrap();
        assert_eq!(s.urls, ["ws://h:80/path@x"]);
        assert_eq!(s.auth, None);

        let e = Seeds::parse("nats://a:s3cret@h:1,nats://b:other@h:2").unwrap_err();
        assert!(e.to_string().contains("different credentials"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(!e.to_string().contains("other"), "{e}");
        let e = Seeds::parse("nats://u:%FF%FE@h:1").unwrap_err();
        assert!(e.to_string().contains("UTF-8"), "{e}");
    }

    #[test]
    fn debug_shows_no_secret() {
        let o = ConnectOptions {
            url: "nats://u:s3cret@h:1".into(),
            password: Some("pw-secret".into()),
            token: Some("tok-secret".into()),
            nkey: Some("SUseed".into()),
            ..Default::default()
        };
        let d = format!("{o:?}");
        for secret in ["s3cret", "pw-secret", "tok-secret", "SUseed"] {
            assert!(!d.contains(secret), "{d}");
        }
    }

    #[test]
    fn secrets_in_free_text_are_redacted() {
        assert_eq!(
            redact("cannot reach nats://u:s3cret@h:1 or tls://tok@h:2: refused"),
            "cannot reach nats://u:***@h:1 or tls://***:***@h:2: refused"
        );
        assert_eq!(redact("user@example no url"), "user@example no url");
    }

    #[tokio::test]
    async fn a_lone_user_or_password_is_refused_before_connecting() {
        let mut o = ConnectOptions::new("nats://127.0.0.1:1");
        o.user = Some("u".into());
        let e = o.connect().await.unwrap_err();
        assert!(e.to_string().contains("--password"), "{e}");
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
