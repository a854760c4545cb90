//! Where the database is and who we are: `DATABASE_URL` (libpq's URI form)
//! over the libpq environment variables over defaults.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgHost {
    Tcp(String),
    /// A directory holding the server's socket `.s.PGSQL.<port>` (libpq: a
    /// host that starts with `/`).
    Unix(PathBuf),
}

/// libpq's `sslmode`: whether to use TLS and what to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// libpq's `allow` (TLS only if the server insists) is taken as
    /// `prefer`: ringside does not retry a refused plain connection.
    /// TLS if the server offers it, unchecked; plain text otherwise.
    Prefer,
    /// TLS or nothing; the certificate is checked against `sslrootcert`
    /// only if that file exists (as libpq does).
    Require,
    /// TLS, the certificate chain checked against `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

/// libpq's `channel_binding` (SCRAM-SHA-256-PLUS over TLS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelBinding {
    Disable,
    Prefer,
    Require,
}

/// TLS settings of the database connection (libpq's names).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PgTls {
    pub mode: SslMode,
    /// CA certificates (PEM) for `verify-ca`/`verify-full`, or `system`
    /// for the system's store; defaults to `~/.postgresql/root.crt`.
    pub root_cert: Option<PathBuf>,
    pub root_cert_is_system: bool,
    /// A client certificate and its key (PEM), for `cert` authentication.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `direct`: TLS from the first byte with ALPN `postgresql`
    /// (PostgreSQL 17+), instead of the SSLRequest exchange.
    pub direct: bool,
    pub channel_binding: ChannelBinding,
}

impl Default for PgTls {
    fn default() -> Self {
        PgTls {
            mode: SslMode::Prefer,
            root_cert: None,
            root_cert_is_system: false,
            cert: None,
            key: None,
            direct: false,
            channel_binding: ChannelBinding::Prefer,
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    pub host: PgHost,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub application_name: String,
    /// Command-line options for each backend (libpq's `options`, e.g.
    /// `-c statement_timeout=5s -c plan_cache_mode=force_generic_plan`):
    /// session settings from the start, with no statement to run per
    /// connection.
    pub options: Option<String>,
    pub connect_timeout: Duration,
    pub tls: PgTls,
}

/// The password never reaches a log.
impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("options", &self.options)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl fmt::Display for PgConfig {
    /// A URL with the password redacted, for logs and `check-config`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pass = if self.password.is_some() {
            ":<redacted>"
        } else {
            ""
        };
        match &self.host {
            PgHost::Tcp(h) => write!(
                f,
                "postgres://{}{}@{}:{}/{}",
                self.user, pass, h, self.port, self.dbname
            ),
            PgHost::Unix(dir) => write!(
                f,
                "postgres://{}{}@/{}?host={}&port={}",
                self.user,
                pass,
                self.dbname,
                dir.display(),
                self.port
            ),
        }
    }
}

impl PgConfig {
    /// `host:port` (or the socket directory and port), without credentials:
    /// a name for logs and metric labels.
    pub fn describe_host(&self) -> String {
        match &self.host {
            PgHost::Tcp(h) => format!("{h}:{}", self.port),
            PgHost::Unix(dir) => format!("{}:{}", dir.display(), self.port),
        }
    }

    /// The socket path for a unix-socket host.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match &self.host {
            PgHost::Unix(dir) => Some(dir.join(format!(".s.PGSQL.{}", self.port))),
            PgHost::Tcp(_) => None,
        }
    }

    /// The addresses of a TCP host (none for a unix socket). This looks the
    /// name up, which blocks: call it at start-up, never on a core.
    pub fn resolve(&self) -> Result<Vec<std::net::SocketAddr>, String> {
        match &self.host {
            PgHost::Tcp(h) => {
                use std::net::ToSocketAddrs;
                Ok((h.as_str(), self.port)
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve database host {h}: {e}"))?
                    .collect())
            }
            PgHost::Unix(_) => Ok(Vec::new()),
        }
    }

    /// Reads `DATABASE_URL` (if set) over PGHOST, PGPORT, PGUSER, PGPASSWORD,
    /// PGDATABASE, PGAPPNAME, PGOPTIONS, over defaults (localhost:5432, user and
    /// database from the login name). `env` is the environment lookup.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<PgConfig, String> {
        let mut cfg = PgConfig {
            host: PgHost::Tcp("localhost".into()),
            port: 5432,
            user: env("USER").unwrap_or_else(|| "postgres".into()),
            password: None,
            dbname: String::new(),
            application_name: "ringside".into(),
            options: None,
            connect_timeout: Duration::from_secs(5),
            tls: PgTls::default(),
        };
        if let Some(h) = env("PGHOST").filter(|h| !h.is_empty()) {
            cfg.host = parse_host(&h);
        }
        if let Some(p) = env("PGPORT").filter(|p| !p.is_empty()) {
            cfg.port = p
                .parse()
                .map_err(|_| format!("PGPORT: not a port: {p:?}"))?;
        }
        if let Some(u) = env("PGUSER").filter(|u| !u.is_empty()) {
            cfg.user = u;
        }
        cfg.password = env("PGPASSWORD").filter(|p| !p.is_empty());
        if let Some(d) = env("PGDATABASE").filter(|d| !d.is_empty()) {
            cfg.dbname = d;
        }
        if let Some(a) = env("PGAPPNAME").filter(|a| !a.is_empty()) {
            cfg.application_name = a;
        }
        cfg.options = env("PGOPTIONS").filter(|o| !o.is_empty());
        for (var, key) in [
            ("PGSSLMODE", "sslmode"),
            ("PGSSLROOTCERT", "sslrootcert"),
            ("PGSSLCERT", "sslcert"),
            ("PGSSLKEY", "sslkey"),
            ("PGSSLNEGOTIATION", "sslnegotiation"),
            ("PGCHANNELBINDING", "channel_binding"),
        ] {
            if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                apply_tls_param(&mut cfg.tls, key, &v).map_err(|e| format!("{var}: {e}"))?;
            }
        }
        if let Some(url) = env("DATABASE_URL").filter(|u| !u.is_empty()) {
            apply_url(&mut cfg, &url).map_err(|e| format!("DATABASE_URL: {e}"))?;
        }
        // libpq's default root certificate, when it exists.
        if cfg.tls.root_cert.is_none() && !cfg.tls.root_cert_is_system {
            if let Some(home) = env("HOME") {
                let default = PathBuf::from(home).join(".postgresql/root.crt");
                if default.exists() {
                    cfg.tls.root_cert = Some(default);
                }
            }
        }
        if cfg.tls.channel_binding == ChannelBinding::Require && cfg.tls.mode == SslMode::Disable {
            return Err("channel_binding=require needs TLS, but sslmode=disable".into());
        }
        if cfg.tls.mode >= SslMode::VerifyCa
            && cfg.tls.root_cert.is_none()
            && !cfg.tls.root_cert_is_system
        {
            return Err(format!(
                "sslmode={} needs a root certificate: set sslrootcert (a PEM file, or `system`), \
                 or put one in ~/.postgresql/root.crt",
                if cfg.tls.mode == SslMode::VerifyCa {
                    "verify-ca"
                } else {
                    "verify-full"
                }
            ));
        }
        if cfg.tls.cert.is_some() != cfg.tls.key.is_some() {
            return Err("sslcert and sslkey go together".into());
        }
        if cfg.dbname.is_empty() {
            cfg.dbname = cfg.user.clone();
        }
        Ok(cfg)
    }
}

fn parse_host(h: &str) -> PgHost {
    if h.starts_with('/') {
        PgHost::Unix(PathBuf::from(h))
    } else {
        PgHost::Tcp(h.to_string())
    }
}

/// Applies a `postgres://` or `postgresql://` URI:
/// `postgres://user:password@host:port/dbname?param=value&...`.
fn apply_url(cfg: &mut PgConfig, url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
        .ok_or("must start with postgres:// or postgresql://")?;
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match main.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (main, None),
    };
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hp)) => {
            let (user, pass) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                cfg.user = percent_decode(user)?;
            }
            if let Some(p) = pass {
                cfg.password = Some(percent_decode(p)?);
            }
            hp
        }
        None => authority,
    };
    if !hostport.is_empty() {
        if hostport.contains(',') {
            return Err("several hosts are not supported".into());
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unclosed [ in host")?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if !host.is_empty() {
            cfg.host = parse_host(&percent_decode(&host)?);
        }
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            cfg.port = p.parse().map_err(|_| format!("not a port: {p:?}"))?;
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        cfg.dbname = percent_decode(db)?;
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or(format!("parameter without value: {pair:?}"))?;
        let v = percent_decode(v)?;
        match k {
            "host" => cfg.host = parse_host(&v),
            "port" => cfg.port = v.parse().map_err(|_| format!("not a port: {v:?}"))?,
            "dbname" => cfg.dbname = v,
            "user" => cfg.user = v,
            "password" => cfg.password = Some(v),
            "application_name" => cfg.application_name = v,
            "options" => cfg.options = Some(v).filter(|o| !o.is_empty()),
            "connect_timeout" => {
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("connect_timeout: not whole seconds: {v:?}"))?;
                // libpq: zero or negative means wait forever; we keep a bound.
                cfg.connect_timeout = Duration::from_secs(if secs == 0 { 30 } else { secs.max(2) });
            }
            "sslmode" | "sslrootcert" | "sslcert" | "sslkey" | "sslnegotiation"
            | "channel_binding" => apply_tls_param(&mut cfg.tls, k, &v)?,
            _ => return Err(format!("unknown parameter {k:?}")),
        }
    }
    Ok(())
}

/// One TLS parameter, by its libpq name.
fn apply_tls_param(tls: &mut PgTls, key: &str, v: &str) -> Result<(), String> {
    match key {
        "sslmode" => {
            tls.mode = match v {
                "disable" => SslMode::Disable,
                "allow" | "prefer" => SslMode::Prefer,
                "require" => SslMode::Require,
                "verify-ca" => SslMode::VerifyCa,
                "verify-full" => SslMode::VerifyFull,
                _ => return Err(format!("unknown sslmode {v:?}")),
            }
        }
        "sslrootcert" if v == "system" => {
            tls.root_cert_is_system = true;
            tls.root_cert = None;
        }
        "sslrootcert" => tls.root_cert = Some(PathBuf::from(v)),
        "sslcert" => tls.cert = Some(PathBuf::from(v)),
        "sslkey" => tls.key = Some(PathBuf::from(v)),
        "sslnegotiation" => {
            tls.direct = match v {
                "postgres" => false,
                "direct" => true,
                _ => return Err(format!("unknown sslnegotiation {v:?} (postgres or direct)")),
            }
        }
        "channel_binding" => {
            tls.channel_binding = match v {
                "disable" => ChannelBinding::Disable,
                "prefer" => ChannelBinding::Prefer,
                "require" => ChannelBinding::Require,
                _ => return Err(format!("unknown channel_binding {v:?}")),
            }
        }
        _ => return Err(format!("unknown parameter {key:?}")),
    }
    Ok(())
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("percent-encoding in {s:?} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vars: &[(&str, &str)]) -> Result<PgConfig, String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PgConfig::from_env(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn full_url() {
        let c = cfg(&[(
            "DATABASE_URL",
            "postgresql://al%40ice:p%3Ass@db.example:6543/shop?application_name=web&connect_timeout=7\
             &options=-c%20statement_timeout%3D5s",
        )])
        .unwrap();
        assert_eq!(c.options.as_deref(), Some("-c statement_timeout=5s"));
        assert_eq!(c.host, PgHost::Tcp("db.example".into()));
        assert_eq!(c.port, 6543);
        assert_eq!(c.user, "al@ice");
        assert_eq!(c.password.as_deref(), Some("p:ss"));
        assert_eq!(c.dbname, "shop");
        assert_eq!(c.application_name, "web");
        assert_eq!(c.connect_timeout, Duration::from_secs(7));
        assert!(!format!("{c} {c:?}").contains("p:ss"), "password redacted");
    }

    #[test]
    fn unix_socket_hosts() {
        let c = cfg(&[("DATABASE_URL", "postgres://u@%2Fvar%2Frun%2Fpostgresql/db")]).unwrap();
        assert_eq!(c.host, PgHost::Unix("/var/run/postgresql".into()));
        assert_eq!(
            c.socket_path().unwrap(),
            PathBuf::from("/var/run/postgresql/.s.PGSQL.5432")
        );
        let c = cfg(&[("DATABASE_URL", "postgres:///db?host=/tmp&port=5433")]).unwrap();
        assert_eq!(
            c.socket_path().unwrap(),
            PathBuf::from("/tmp/.s.PGSQL.5433")
        );
        let c = cfg(&[("PGHOST", "/run/pg")]).unwrap();
        assert_eq!(c.host, PgHost::Unix("/run/pg".into()));
    }

    #[test]
    fn libpq_variables_and_precedence() {
        let c = cfg(&[
            ("PGHOST", "h1"),
            ("PGPORT", "5555"),
            ("PGUSER", "bob"),
            ("PGPASSWORD", "secret"),
            ("PGDATABASE", "d1"),
            ("PGAPPNAME", "app"),
            ("PGOPTIONS", "-c search_path=shop"),
        ])
        .unwrap();
        assert_eq!(c.options.as_deref(), Some("-c search_path=shop"));
        assert_eq!(c.host, PgHost::Tcp("h1".into()));
        assert_eq!(
            (c.port, c.user.as_str(), c.dbname.as_str()),
            (5555, "bob", "d1")
        );
        assert_eq!(c.password.as_deref(), Some("secret"));
        assert_eq!(c.application_name, "app");
        let c = cfg(&[("PGHOST", "h1"), ("DATABASE_URL", "postgres://h2/d2")]).unwrap();
        assert_eq!(c.host, PgHost::Tcp("h2".into()), "the URL wins");
        let c = cfg(&[("PGUSER", "carol")]).unwrap();
        assert_eq!(c.dbname, "carol", "database defaults to the user");
    }

    #[test]
    fn tls_parameters() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.tls.mode, SslMode::Prefer, "libpq's default");
        let c = cfg(&[(
            "DATABASE_URL",
            "postgres://h/d?sslmode=verify-full&sslrootcert=/ca.pem&sslcert=/c.pem&sslkey=/k.pem&channel_binding=require&sslnegotiation=direct",
        )])
        .unwrap();
        assert_eq!(c.tls.mode, SslMode::VerifyFull);
        assert_eq!(
            c.tls.root_cert.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        assert!(c.tls.direct);
        assert_eq!(c.tls.channel_binding, ChannelBinding::Require);
        let c = cfg(&[("PGSSLMODE", "require"), ("PGCHANNELBINDING", "disable")]).unwrap();
        assert_eq!(c.tls.mode, SslMode::Require);
        assert_eq!(c.tls.channel_binding, ChannelBinding::Disable);
        let e = cfg(&[("DATABASE_URL", "postgres://h/d?sslmode=verify-ca")]).unwrap_err();
        assert!(e.contains("needs a root certificate"), "{e}");
        let e = cfg(&[(
            "DATABASE_URL",
            "postgres://h/d?sslmode=disable&channel_binding=require",
        )])
        .unwrap_err();
        assert!(e.contains("needs TLS"), "{e}");
        let e = cfg(&[("DATABASE_URL", "postgres://h/d?sslcert=/c.pem")]).unwrap_err();
        assert!(e.contains("go together"), "{e}");
    }

    #[test]
    fn refusals_are_clear() {
        assert!(cfg(&[("DATABASE_URL", "postgres://h/d?sslmode=sometimes")]).is_err());
        assert!(cfg(&[("DATABASE_URL", "mysql://h/d")]).is_err());
        assert!(cfg(&[("DATABASE_URL", "postgres://h:notaport/d")]).is_err());
        assert!(cfg(&[("DATABASE_URL", "postgres://h/d?bogus=1")]).is_err());
        assert!(cfg(&[("DATABASE_URL", "postgres://h/d%zz")]).is_err());
        assert!(cfg(&[("DATABASE_URL", "postgres://h/d?sslmode=disable")]).is_ok());
    }
}
