//! A real PostgreSQL for the tests: a private throwaway cluster made by
//! `scripts/pg-test-cluster` (initdb in a temporary directory, as user
//! `postgres` when run as root, a unix socket there and a free TCP port, a
//! trust, an md5, a SCRAM and a cleartext user).
//!
//! `shared()` is one cluster for the whole test run: taken from the
//! environment when `scripts/test` started one (RINGSIDE_PG_*), else started
//! here with a watchdog that stops it when this process ends. Tests that
//! stop or restart the server use `Cluster::private()`, their own.

#![allow(unsafe_code, reason = "a signal or uid call for the throwaway cluster")]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// A psql process the test leaves running (a lock holder): killed when
/// dropped, so a test that fails before ending it leaves nothing behind;
/// its backend notices the client gone within a second
/// (`client_connection_check_interval`, set for every psql here) and ends
/// its statement.
pub struct SpawnedPsql(std::process::Child);

impl SpawnedPsql {
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for SpawnedPsql {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    pub bindir: PathBuf,
    owned: bool,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn parse_env(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

fn temp_dir() -> PathBuf {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    PathBuf::from(format!(
        "/tmp/ringside-pg-{}-{}",
        std::process::id(),
        n % 1_000_000_000
    ))
}

impl Cluster {
    /// Starts a new cluster, stopped and removed when dropped.
    pub fn private() -> Cluster {
        let mut c = Self::start_new();
        c.owned = true;
        c
    }

    /// A streaming replica of `primary` (`pg_basebackup -R`), its own
    /// throwaway cluster, stopped and removed when dropped.
    pub fn replica_of(primary: &Cluster) -> Cluster {
        let dir = temp_dir();
        let primary_dir = primary.dir.to_string_lossy().into_owned();
        let mut c = Self::from_script(&["replica", &primary_dir], dir);
        c.owned = true;
        c
    }

    fn start_new() -> Cluster {
        Self::from_script(&["start"], temp_dir())
    }

    /// Runs `scripts/pg-test-cluster ARGS DIR` and reads the cluster it
    /// made from its KEY=value output.
    fn from_script(args: &[&str], dir: PathBuf) -> Cluster {
        let out = Command::new(repo().join("scripts/pg-test-cluster"))
            .args(args)
            .arg(&dir)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/pg-test-cluster");
        assert!(out.status.success(), "pg-test-cluster {args:?} failed");
        let text = String::from_utf8(out.stdout).unwrap();
        Cluster {
            port: parse_env(&text, "RINGSIDE_PG_PORT")
                .unwrap()
                .parse()
                .unwrap(),
            bindir: parse_env(&text, "RINGSIDE_PG_BINDIR").unwrap().into(),
            dir,
            owned: false,
        }
    }

    /// A libpq URL for one of the test users, over TCP or the unix socket.
    pub fn url(&self, user: &str, password: Option<&str>, tcp: bool) -> String {
        let auth = match password {
            Some(p) => format!("{user}:{p}"),
            None => user.to_string(),
        };
        if tcp {
            format!("postgres://{auth}@127.0.0.1:{}/ringside_test", self.port)
        } else {
            format!(
                "postgres://{auth}@/ringside_test?host={}&port={}",
                self.dir.display(),
                self.port
            )
        }
    }

    /// Runs SQL as the superuser with psql; returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("ringside_test", sql)
    }

    /// `psql` in another database.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let out = self
            .psql_command(db, sql)
            .args(["-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// `psql_in` that gives `None` instead of failing (a database not
    /// there yet, a server not up).
    pub fn try_psql_in(&self, db: &str, sql: &str) -> Option<String> {
        let out = self
            .psql_command(db, sql)
            .args(["-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Starts psql as the superuser in `db` running `sql`, without waiting
    /// for it (a session that holds a lock, say).
    pub fn psql_spawn_in(&self, db: &str, sql: &str) -> SpawnedPsql {
        SpawnedPsql(
            self.psql_command(db, sql)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("psql"),
        )
    }

    /// psql as the superuser in `db`, over the cluster's socket, running `sql`.
    fn psql_command(&self, db: &str, sql: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join("psql"));
        // A cluster that stops answering fails the test, not hangs it.
        cmd.env("PGCONNECT_TIMEOUT", "30")
            .env("PGOPTIONS", "-c client_connection_check_interval=1000");
        cmd.args(["-X", "-q", "-U", "postgres", "-d", db])
            .arg("-h")
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql);
        cmd
    }

    /// Runs pg_ctl as the cluster's owner.
    pub fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.join("data");
        // SAFETY: geteuid(2) has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let mut cmd = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(self.bindir.join("pg_ctl"));
            c
        } else {
            Command::new(self.bindir.join("pg_ctl"))
        };
        let status = cmd
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60"])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl");
        assert!(status.success(), "pg_ctl {args:?}");
    }

    /// A new, empty database owned by `ringside_md5`, named `{prefix}_{pid}_{n}`;
    /// returns its name and a TCP URL for that user.
    pub fn new_database(&self, prefix: &str) -> (String, String) {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        self.psql(&format!("CREATE DATABASE {name} OWNER ringside_md5"));
        let url = format!(
            "postgres://ringside_md5:md5pass@127.0.0.1:{}/{name}",
            self.port
        );
        (name, url)
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned {
            let _ = Command::new(repo().join("scripts/pg-test-cluster"))
                .arg("stop")
                .arg(&self.dir)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The cluster shared by the tests that leave the server running.
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    SHARED.get_or_init(|| {
        if let (Ok(port), Ok(dir), Ok(bindir)) = (
            std::env::var("RINGSIDE_PG_PORT"),
            std::env::var("RINGSIDE_PG_SOCKET_DIR"),
            std::env::var("RINGSIDE_PG_BINDIR"),
        ) {
            return Cluster {
                dir: dir.into(),
                port: port.parse().expect("RINGSIDE_PG_PORT"),
                bindir: bindir.into(),
                owned: false,
            };
        }
        let c = Cluster::start_new();
        // Statics are never dropped: a watchdog stops the cluster once this
        // test process has exited. It outlives us, so it is never waited for.
        let script = repo().join("scripts/pg-test-cluster");
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {pid} 2>/dev/null; do sleep 1; done; '{}' stop '{}'",
                script.display(),
                c.dir.display(),
                pid = std::process::id()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(std::mem::forget)
            .expect("start the cluster watchdog");
        c
    })
}
