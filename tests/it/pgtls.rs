//! The PostgreSQL client over TLS against a real server: a private cluster
//! started with `ssl = on`, certificates made here (rcgen), `hostssl` and
//! `hostnossl` lines in pg_hba.conf.
#![allow(
    unsafe_code,
    reason = "geteuid, to give the key file to the cluster's owner"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
use ringside::pg::{
    ConnSettings, Param, PgConfig, PgConn, Pool, PoolSettings, QueryError, Statement,
};

use crate::pgclient::run;
use crate::pgfix::{shared, Cluster};

fn config(url: &str) -> Result<PgConfig, String> {
    PgConfig::from_env(|k| (k == "DATABASE_URL").then(|| url.to_string()))
}

async fn connect(url: &str) -> Result<Rc<PgConn>, QueryError> {
    let cfg = config(url).map_err(QueryError::Unavailable)?;
    let addrs: Vec<SocketAddr> = cfg.resolve().unwrap();
    PgConn::connect(&cfg, &addrs, ConnSettings::default()).await
}

/// 1 if the connection's backend is on TLS, 0 if not.
static ON_TLS: Statement = Statement {
    sql: "SELECT (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())::int4",
    param_types: &[],
    read_only: true,
    fresh: false,
};

static SELECT_INT: Statement = Statement {
    sql: "SELECT $1::int4",
    param_types: &[0],
    read_only: true,
    fresh: false,
};

async fn on_tls(url: &str) -> Result<i32, String> {
    let conn = connect(url).await.map_err(|e| e.to_string())?;
    let rows = conn.query(&ON_TLS, &[]).await.map_err(|e| e.to_string())?;
    let row = rows.iter().next().unwrap().unwrap();
    Ok(row.req_i32(&rows.columns, 0).unwrap())
}

/// A CA, and what it signs.
struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
    pem: String,
}

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let pem = cert.pem();
    Ca { key, cert, pem }
}

/// A certificate (PEM) and its key (PEM), signed by `ca` or self-signed.
fn leaf(ca: Option<&Ca>, names: &[&str], cn: &str, expired: bool) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    if expired {
        params.not_before = rcgen::date_time_ymd(2001, 1, 1);
        params.not_after = rcgen::date_time_ymd(2002, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = match ca {
        Some(ca) => params.signed_by(&key, &ca.cert, &ca.key).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    (cert.pem(), key.serialize_pem())
}

fn postgres_ids() -> Option<(u32, u32)> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = std::process::Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    Some((id("-u"), id("-g")))
}

/// Writes a file the cluster's owner can read; keys only by the owner.
fn write_for_cluster(path: &Path, text: &str, private: bool) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(if private { 0o600 } else { 0o644 }),
    )
    .unwrap();
    if let Some((uid, gid)) = postgres_ids() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

/// A private cluster with TLS on, and the files the tests use.
struct TlsCluster {
    cluster: Cluster,
    dir: PathBuf,
    ca: Ca,
}

impl TlsCluster {
    fn start() -> TlsCluster {
        let cluster = Cluster::private();
        let data = cluster.dir.join("data");
        let ca = new_ca("ringside test CA");
        let (cert, key) = leaf(Some(&ca), &["localhost"], "localhost", false);
        write_for_cluster(&data.join("server.crt"), &cert, false);
        write_for_cluster(&data.join("server.key"), &key, true);
        write_for_cluster(&data.join("root.crt"), &ca.pem, false);
        // First match wins: these come before the script's lines.
        let hba = data.join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).unwrap();
        let new = format!(
            "hostssl   all ringside_tls_only 127.0.0.1/32 scram-sha-256\n\
             hostnossl all ringside_tls_only 127.0.0.1/32 reject\n\
             hostssl   all ringside_certuser 127.0.0.1/32 cert\n{old}"
        );
        write_for_cluster(&hba, &new, false);
        // One statement per psql call: ALTER SYSTEM refuses a transaction.
        for sql in [
            "ALTER SYSTEM SET ssl = on",
            "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
            "ALTER SYSTEM SET ssl_key_file = 'server.key'",
            "ALTER SYSTEM SET ssl_ca_file = 'root.crt'",
            "CREATE ROLE ringside_tls_only LOGIN PASSWORD 'tlspass'",
            "CREATE ROLE ringside_certuser LOGIN",
        ] {
            cluster.psql(sql);
        }
        cluster.pg_ctl(&["-m", "fast", "restart"]);
        // The client's files, readable by this process.
        let dir = cluster.dir.join("client");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
        std::fs::write(dir.join("other-ca.pem"), new_ca("another CA").pem).unwrap();
        let (cert, key) = leaf(Some(&ca), &[], "ringside_certuser", false);
        std::fs::write(dir.join("client.pem"), cert).unwrap();
        std::fs::write(dir.join("client.key"), key).unwrap();
        TlsCluster { cluster, dir, ca }
    }

    fn url(&self, user: &str, host: &str, params: &str) -> String {
        format!(
            "postgres://{user}@{host}:{}/ringside_test?{params}",
            self.cluster.port
        )
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// Swaps the server's certificate and reloads.
    fn serve_certificate(&self, cert: &str, key: &str) {
        let data = self.cluster.dir.join("data");
        write_for_cluster(&data.join("server.crt"), cert, false);
        write_for_cluster(&data.join("server.key"), key, true);
        self.cluster.psql("SELECT pg_reload_conf()");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn postgres_over_tls_with_every_sslmode_and_check() {
    let t = TlsCluster::start();
    let scram = "ringside_scram:scrampass";
    let ca = t.file("ca.pem");
    let other_ca = t.file("other-ca.pem");
    run(async {
        // Encryption follows sslmode.
        assert_eq!(
            on_tls(&t.url(scram, "127.0.0.1", "sslmode=require")).await,
            Ok(1)
        );
        assert_eq!(
            on_tls(&t.url(scram, "127.0.0.1", "sslmode=prefer")).await,
            Ok(1)
        );
        assert_eq!(
            on_tls(&t.url(scram, "127.0.0.1", "sslmode=disable")).await,
            Ok(0)
        );
        // hostssl / hostnossl: a TLS-only user cannot come in plain text.
        assert_eq!(
            on_tls(&t.url("ringside_tls_only:tlspass", "127.0.0.1", "sslmode=require")).await,
            Ok(1)
        );
        let e = on_tls(&t.url("ringside_tls_only:tlspass", "127.0.0.1", "sslmode=disable"))
            .await
            .unwrap_err();
        assert!(e.contains("pg_hba.conf"), "{e}");

        // The chain: trusted CA, wrong CA; `require` with a root file
        // checks the chain too (libpq).
        let ok = format!("sslmode=verify-ca&sslrootcert={ca}");
        assert_eq!(on_tls(&t.url(scram, "127.0.0.1", &ok)).await, Ok(1));
        for mode in ["verify-ca", "verify-full", "require"] {
            let bad = format!("sslmode={mode}&sslrootcert={other_ca}");
            let e = on_tls(&t.url(scram, "localhost", &bad)).await.unwrap_err();
            assert!(e.contains("not trusted"), "{mode}: {e}");
        }
        // The name: the certificate is for localhost only.
        let full = format!("sslmode=verify-full&sslrootcert={ca}");
        assert_eq!(on_tls(&t.url(scram, "localhost", &full)).await, Ok(1));
        let e = on_tls(&t.url(scram, "127.0.0.1", &full)).await.unwrap_err();
        assert!(e.contains("does not name this host"), "{e}");

        // Client certificates (`cert` authentication).
        let with_cert = format!(
            "sslmode=verify-full&sslrootcert={ca}&sslcert={}&sslkey={}",
            t.file("client.pem"),
            t.file("client.key")
        );
        assert_eq!(
            on_tls(&t.url("ringside_certuser", "localhost", &with_cert)).await,
            Ok(1)
        );
        let e = on_tls(&t.url("ringside_certuser", "localhost", &full))
            .await
            .unwrap_err();
        assert!(e.contains("certificate"), "{e}");

        // Channel binding: the server checks the binding data against its
        // own certificate, so a wrong hash would fail authentication.
        let bind = format!("sslmode=verify-full&sslrootcert={ca}&channel_binding=require");
        assert_eq!(on_tls(&t.url(scram, "localhost", &bind)).await, Ok(1));
        let e = on_tls(&t.url("ringside_trust", "localhost", &bind))
            .await
            .unwrap_err();
        assert!(e.contains("channel binding"), "{e}");
        let e = on_tls(&t.url("ringside_md5:md5pass", "localhost", &bind))
            .await
            .unwrap_err();
        assert!(e.contains("channel binding"), "{e}");
    });

    // An expired certificate and a self-signed one are refused by the
    // checking modes.
    let (cert, key) = leaf(Some(&t.ca), &["localhost"], "localhost", true);
    t.serve_certificate(&cert, &key);
    run(async {
        for mode in ["verify-ca", "verify-full"] {
            let e = on_tls(&t.url(
                scram,
                "localhost",
                &format!("sslmode={mode}&sslrootcert={ca}"),
            ))
            .await
            .unwrap_err();
            assert!(e.contains("expired"), "{mode}: {e}");
        }
    });
    let (cert, key) = leaf(None, &["localhost"], "localhost", false);
    t.serve_certificate(&cert, &key);
    run(async {
        for mode in ["verify-ca", "verify-full"] {
            let e = on_tls(&t.url(
                scram,
                "localhost",
                &format!("sslmode={mode}&sslrootcert={ca}"),
            ))
            .await
            .unwrap_err();
            assert!(e.contains("not trusted"), "{mode}: {e}");
        }
        // Without a check, it is encryption only.
        assert_eq!(
            on_tls(&t.url(scram, "localhost", "sslmode=require")).await,
            Ok(1)
        );
    });
}

#[test]
fn require_against_a_server_without_tls_is_refused_and_prefer_goes_plain() {
    let c = shared();
    run(async {
        let url = format!(
            "{}?sslmode=require",
            c.url("ringside_scram", Some("scrampass"), true)
        );
        let e = match connect(&url).await {
            Ok(_) => panic!("connected in plain text with sslmode=require"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("refused SSL"), "{e}");
        let url = format!(
            "{}?sslmode=prefer",
            c.url("ringside_scram", Some("scrampass"), true)
        );
        let conn = connect(&url).await.expect("plain text");
        let rows = conn.query(&SELECT_INT, &[Param::I32(5)]).await.unwrap();
        assert_eq!(
            rows.iter()
                .next()
                .unwrap()
                .unwrap()
                .req_i32(&rows.columns, 0)
                .unwrap(),
            5
        );
    });
}

static SLEEP: Statement = Statement {
    sql: "SELECT pg_sleep(30)::text",
    param_types: &[],
    read_only: true,
    fresh: false,
};

static SLEEPERS: Statement = Statement {
    sql: "SELECT count(*)::int4 FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(30)%'",
    param_types: &[],
    read_only: true,
    fresh: false,
};

#[test]
fn a_pool_over_tls_cancels_over_tls_and_survives_a_restart() {
    let t = TlsCluster::start();
    let url = t.url(
        "ringside_scram:scrampass",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", t.file("ca.pem")),
    );
    let cfg = config(&url).unwrap();
    let addrs = cfg.resolve().unwrap();
    let settings = PoolSettings {
        connections: 2,
        max_waiters: 256,
        wait_timeout: Duration::from_secs(2),
        query_timeout: Duration::from_secs(1),
        max_exclusive: 1,
        ..PoolSettings::default()
    };
    // A query past its timeout is cancelled: the CancelRequest goes over
    // TLS too (this server takes nothing else from this user).
    run(async {
        let p = Pool::new(cfg.clone(), addrs.clone(), settings.clone());
        assert!(p.query(&SLEEP, &[]).await.is_err());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let rows = p.query(&SLEEPERS, &[]).await.unwrap();
            let n = rows
                .iter()
                .next()
                .unwrap()
                .unwrap()
                .req_i32(&rows.columns, 0)
                .unwrap();
            if n == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the sleeping query was not cancelled"
            );
            monoio::time::sleep(Duration::from_millis(100)).await;
        }
        p.close();
    });
    // A restart under load: the pool reconnects, over TLS.
    std::thread::scope(|s| {
        let load = s.spawn(|| {
            run(async {
                let p = Pool::new(cfg.clone(), addrs.clone(), settings.clone());
                let deadline = Instant::now() + Duration::from_secs(7);
                let mut ok = 0u32;
                while Instant::now() < deadline {
                    if p.query(&SELECT_INT, &[Param::I32(1)]).await.is_ok() {
                        ok += 1;
                    }
                    monoio::time::sleep(Duration::from_millis(20)).await;
                }
                let after = p.query(&ON_TLS, &[]).await;
                let reconnects = p.stats().reconnects;
                p.close();
                let tls = after.map(|rows| {
                    rows.iter()
                        .next()
                        .unwrap()
                        .unwrap()
                        .req_i32(&rows.columns, 0)
                        .unwrap()
                });
                (ok, tls, reconnects)
            })
        });
        std::thread::sleep(Duration::from_secs(2));
        t.cluster.pg_ctl(&["-m", "fast", "restart"]);
        let (ok, tls, reconnects) = load.join().unwrap();
        assert!(ok > 0);
        assert!(reconnects >= 1, "reconnected ({reconnects})");
        assert_eq!(tls.ok(), Some(1), "still on TLS after the restart");
    });
}
