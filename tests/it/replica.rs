//! Reads on PostgreSQL streaming replicas (`--db-replica`): a private
//! primary and a replica made from it with `pg_basebackup -R`, both real
//! clusters. Reads land on the replica, writes on the primary; a replica
//! that stops, or lags past the bound, loses its reads without a request
//! failing, and gets them back when it returns.

#![allow(unsafe_code, reason = "kill(2), to stall the test's own replica")]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ringside::config::ReplicaFallback;
use ringside::pg::{
    Param, PgConfig, Pool, PoolSettings, QueryError, ReplicaTarget, Router, RouterSettings,
    Statement,
};

use crate::app::{contacts_csv, post_csv_to, Db};
use crate::harness::{get, Server, StopOnDrop};
use crate::pgclient::run;
use crate::pgfix::{shared, Cluster};

/// The sum of a metric's samples whose labels contain every `want`.
fn metric(srv: &Server, name: &str, want: &[&str]) -> f64 {
    let page = srv.connect().roundtrip(get("/metrics")).text();
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| want.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (up to a generous bound, for slow CI machines) until `ok`.
fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A primary with a migrated, seeded database, and a streaming replica
/// that has caught up with it.
fn primary_and_replica(orders: u64) -> (Cluster, Cluster, String, String, String) {
    let primary = Cluster::private();
    let replica = Cluster::replica_of(&primary);
    let (name, url) = {
        let db = Db::new(&primary, orders);
        (db.name.clone(), db.url.clone())
    };
    wait_for("the replica replays the seeded orders", || {
        replica.try_psql_in(&name, "SELECT count(*) FROM orders") == Some(orders.to_string())
    });
    let replica_url = format!(
        "postgres://ringside_md5:md5pass@127.0.0.1:{}/{name}?application_name=ringside-replica-test",
        replica.port
    );
    (primary, replica, name, url, replica_url)
}

/// A server on `cores` cores reading from `replica_url`, with `extra`
/// flags, once every core routes reads to the replica.
fn server_on_replica(url: &str, replica_url: &str, cores: u32, extra: &[&str]) -> Server {
    let cores_text = cores.to_string();
    let mut args = vec![
        "--cores",
        &cores_text,
        "--db-replica",
        replica_url,
        "--db-replica-check-interval",
        "100ms",
    ];
    args.extend_from_slice(extra);
    let srv = Server::start_with_env("auto", &args, &[("DATABASE_URL", url)]);
    wait_for("every core routes reads to the replica", || {
        serving(&srv, "replica1") == f64::from(cores)
    });
    srv
}

fn serving(srv: &Server, pool: &str) -> f64 {
    metric(
        srv,
        "ringside_db_pool_serving",
        &[&format!("pool=\"{pool}\"")],
    )
}

fn routed(srv: &Server, pool: &str) -> f64 {
    metric(
        srv,
        "ringside_db_routed_reads_total",
        &[&format!("pool=\"{pool}\"")],
    )
}

/// Keeps `threads` keep-alive clients asking for `/orders` until `stop`;
/// counts answers and failures (anything but 200).
fn orders_load<'scope>(
    addr: SocketAddr,
    threads: usize,
    stop: &'scope AtomicBool,
    ok: &'scope AtomicU64,
    failed: &'scope AtomicU64,
    scope: &'scope thread::Scope<'scope, '_>,
) {
    for _ in 0..threads {
        scope.spawn(move || {
            let s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut c = crate::harness::Conn::from_parts(s, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let r = c.roundtrip(get("/orders"));
                if r.status == 200 && r.text().contains("<tr><td>") {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    eprintln!("failed /orders: {} {}", r.status, r.text());
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

#[test]
fn reads_on_the_replica_writes_on_the_primary_and_a_stopped_replica_costs_no_read() {
    let (primary, replica, name, url, replica_url) = primary_and_replica(300);
    let srv = server_on_replica(&url, &replica_url, 2, &[]);

    let mut c = srv.connect();
    for _ in 0..20 {
        let r = c.roundtrip(get("/orders"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains(" #200</td>"));
    }
    assert!(routed(&srv, "replica1") >= 20.0);
    assert_eq!(routed(&srv, "primary"), 0.0);
    crate::ops::promtool_accepts(&srv.connect().roundtrip(get("/metrics")).text());
    // Seen from each server (below, under load): backends showing the
    // page's statement as their last, on the replica and not the primary.
    let ran_page = |cluster: &Cluster| -> u64 {
        cluster
            .psql(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}' \
                 AND query LIKE 'SELECT title FROM orders%'"
            ))
            .parse()
            .unwrap()
    };

    // A write goes to the primary (a replica would refuse it).
    let r = post_csv_to(srv.addr, &contacts_csv(500, None));
    assert_eq!(r.status, 201, "{}", r.text());
    let primary_contacts = primary.psql_in(&name, "SELECT count(*) FROM contacts");
    assert_eq!(primary_contacts, "500");
    wait_for("the import reaches the replica", || {
        replica.try_psql_in(&name, "SELECT count(*) FROM contacts") == Some("500".into())
    });

    // Stop the replica under load, then bring it back: no request fails.
    let stop = AtomicBool::new(false);
    let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        orders_load(srv.addr, 4, &stop, &ok, &failed, scope);
        wait_for("load runs", || ok.load(Ordering::Relaxed) >= 50);
        wait_for("the replica's backends run the page", || {
            ran_page(&replica) >= 1
        });
        for _ in 0..5 {
            assert_eq!(ran_page(&primary), 0, "the primary never runs the page");
            thread::sleep(Duration::from_millis(20));
        }
        replica.pg_ctl(&["stop", "-m", "fast"]);
        let on_primary = routed(&srv, "primary");
        wait_for("reads move to the primary", || {
            routed(&srv, "primary") > on_primary + 50.0
        });
        assert_eq!(serving(&srv, "replica1"), 0.0);
        replica.pg_ctl(&["start"]);
        let on_replica = routed(&srv, "replica1");
        wait_for("reads come back to the replica", || {
            serving(&srv, "replica1") == 2.0 && routed(&srv, "replica1") > on_replica + 50.0
        });
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no failed /orders");
    assert!(ok.load(Ordering::Relaxed) > 100);
    let r = srv.connect().roundtrip(get("/readyz"));
    assert_eq!(r.status, 200);
}

#[test]
fn a_replica_whose_replay_is_paused_past_the_lag_bound_loses_its_reads() {
    let (primary, replica, name, url, replica_url) = primary_and_replica(20);
    let srv = server_on_replica(&url, &replica_url, 1, &["--db-max-replica-lag", "1s"]);

    replica.psql("SELECT pg_wal_replay_pause()");
    // Commits keep arriving on the primary; the replica receives them but
    // does not replay them, so its lag grows past the bound.
    let insert = |title: &str| {
        primary.psql_in(
            &name,
            &format!("INSERT INTO orders (title) VALUES ('{title}')"),
        )
    };
    let mut n = 0;
    wait_for("the lagging replica stops serving", || {
        n += 1;
        insert(&format!("while paused {n}"));
        thread::sleep(Duration::from_millis(100));
        serving(&srv, "replica1") == 0.0
    });
    assert!(metric(&srv, "ringside_db_replica_lag_seconds", &["replica1"]) >= 1.0);
    insert("written after the pause");
    // The page now comes from the primary, with the rows the replica has
    // not replayed.
    let before = routed(&srv, "primary");
    let r = srv.connect().roundtrip(get("/orders?limit=1000"));
    assert_eq!(r.status, 200);
    assert!(r.text().contains("written after the pause"));
    assert_eq!(routed(&srv, "primary"), before + 1.0);

    replica.psql("SELECT pg_wal_replay_resume()");
    // Within the bound is not the same as caught up: wait for both.
    wait_for("the replica catches up and serves again", || {
        replica.try_psql_in(
            &name,
            "SELECT count(*) FROM orders WHERE title = 'written after the pause'",
        ) == Some("1".into())
            && serving(&srv, "replica1") == 1.0
    });
    let before = routed(&srv, "replica1");
    let r = srv.connect().roundtrip(get("/orders?limit=1000"));
    assert!(r.text().contains("written after the pause"), "replayed");
    assert_eq!(routed(&srv, "replica1"), before + 1.0);
}

static IN_RECOVERY: Statement = Statement {
    sql: "SELECT pg_is_in_recovery()::int4",
    param_types: &[],
    read_only: true,
    fresh: false,
};

static IN_RECOVERY_FRESH: Statement = Statement {
    sql: "SELECT pg_is_in_recovery()::int4",
    param_types: &[],
    read_only: true,
    fresh: true,
};

static IN_RECOVERY_AS_WRITE: Statement = Statement {
    sql: "SELECT pg_is_in_recovery()::int4",
    param_types: &[],
    read_only: false,
    fresh: false,
};

/// Takes ten seconds on a replica (its stop cuts that short) and none on
/// the primary, then says where it ran.
static SLOW_IN_RECOVERY: Statement = Statement {
    sql: "SELECT pg_is_in_recovery()::int4 \
          FROM (SELECT CASE WHEN pg_is_in_recovery() THEN pg_sleep($1::int4) END) AS nap",
    param_types: &[23],
    read_only: true,
    fresh: false,
};

fn target(url: &str) -> (PgConfig, Vec<SocketAddr>) {
    let cfg = PgConfig::from_env(|k| (k == "DATABASE_URL").then(|| url.to_string())).unwrap();
    let addrs = cfg.resolve().unwrap();
    (cfg, addrs)
}

fn router(primary_url: &str, replica_url: &str, fallback: ReplicaFallback) -> std::rc::Rc<Router> {
    let (cfg, addrs) = target(primary_url);
    let (rcfg, raddrs) = target(replica_url);
    let settings = PoolSettings {
        connections: 2,
        ..PoolSettings::default()
    };
    let primary = Pool::new(cfg, addrs, settings.clone());
    Router::new(
        primary,
        &[ReplicaTarget {
            name: rcfg.describe_host(),
            config: rcfg,
            addrs: raddrs,
        }],
        RouterSettings {
            max_lag: Duration::from_secs(5),
            check_interval: Duration::from_millis(100),
            fallback,
            replica_pool: PoolSettings {
                fail_fast: true,
                ..settings
            },
            primary_name: "primary".into(),
        },
    )
}

async fn where_it_ran(
    r: &Router,
    stmt: &'static Statement,
    params: &[Param<'_>],
) -> Result<i32, QueryError> {
    let rows = r.query(stmt, params).await?;
    let row = rows.iter().next().unwrap().unwrap();
    Ok(row.req_i32(&rows.columns, 0).unwrap())
}

async fn until_serving(r: &Router) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !r.reports()[1].serving {
        assert!(Instant::now() < deadline, "replica never served");
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The routing API itself: what a user's own service gets.
#[test]
fn statements_are_routed_by_their_marks_and_a_read_in_flight_on_a_dying_replica_runs_again() {
    let (_primary, replica, _name, url, replica_url) = primary_and_replica(1);
    thread::scope(|scope| {
        run(async {
            let r = router(&url, &replica_url, ReplicaFallback::Primary);
            until_serving(&r).await;
            assert_eq!(
                where_it_ran(&r, &IN_RECOVERY, &[]).await,
                Ok(1),
                "a read: the replica"
            );
            assert_eq!(
                where_it_ran(&r, &IN_RECOVERY_FRESH, &[]).await,
                Ok(0),
                "fresh: the primary"
            );
            assert_eq!(
                where_it_ran(&r, &IN_RECOVERY_AS_WRITE, &[]).await,
                Ok(0),
                "a write: the primary"
            );

            // The replica stops while a read runs there: the read runs again
            // on the primary and succeeds.
            let stopping = scope.spawn(|| {
                thread::sleep(Duration::from_millis(300));
                replica.pg_ctl(&["stop", "-m", "fast"]);
            });
            let slow = where_it_ran(&r, &SLOW_IN_RECOVERY, &[Param::I32(10)]).await;
            assert_eq!(slow, Ok(0), "ran again on the primary");
            assert!(r.reports()[1].failovers >= 1);
            assert!(!r.reports()[1].serving);
            while !stopping.is_finished() {
                monoio::time::sleep(Duration::from_millis(20)).await;
            }

            // With every replica out and `fail`, reads get an error, and
            // writes still run.
            let strict = router(&url, &replica_url, ReplicaFallback::Fail);
            monoio::time::sleep(Duration::from_millis(300)).await;
            assert!(matches!(
                where_it_ran(&strict, &IN_RECOVERY, &[]).await,
                Err(QueryError::Unavailable(_))
            ));
            assert_eq!(
                where_it_ran(&strict, &IN_RECOVERY_AS_WRITE, &[]).await,
                Ok(0)
            );
            assert_eq!(where_it_ran(&strict, &IN_RECOVERY_FRESH, &[]).await, Ok(0));
            r.close();
            strict.close();
        });
    });
}

/// A replica that never answers: reads go to the primary (the default) or
/// get 503 (`--db-replica-fallback fail`); `/readyz` follows the primary.
#[test]
fn with_no_replica_reachable_reads_fall_back_or_fail_as_configured() {
    let db = Db::new(shared(), 10);
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!(
        "postgres://ringside_md5:md5pass@{}/{}?connect_timeout=1",
        closed.local_addr().unwrap(),
        db.name
    );
    drop(closed);
    let srv = db.server(&["--db-replica", &dead]);
    wait_for("the primary's pool is up", || {
        srv.connect().roundtrip(get("/readyz")).status == 200
    });
    let r = srv.connect().roundtrip(get("/orders"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(routed(&srv, "primary") >= 1.0);
    assert_eq!(serving(&srv, "replica1"), 0.0);

    let strict = db.server(&["--db-replica", &dead, "--db-replica-fallback", "fail"]);
    wait_for("the primary's pool is up", || {
        strict.connect().roundtrip(get("/readyz")).status == 200
    });
    let r = strict.connect().roundtrip(get("/orders"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("database unavailable"));
    // Writes still go to the primary.
    let r = post_csv_to(strict.addr, &contacts_csv(10, None));
    assert_eq!(r.status, 201, "{}", r.text());
}

/// The replica's processes, postmaster first (to stop and continue them).
fn replica_processes(replica: &Cluster) -> Vec<i32> {
    let pid_file = std::fs::read_to_string(replica.dir.join("data/postmaster.pid")).unwrap();
    let postmaster: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    let children = std::process::Command::new("pgrep")
        .args(["-P", &postmaster.to_string()])
        .output()
        .unwrap();
    let mut pids = vec![postmaster];
    pids.extend(
        String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok()),
    );
    pids
}

/// Sends SIGCONT to its processes when dropped.
struct ContOnDrop<'a>(&'a [i32]);

impl Drop for ContOnDrop<'_> {
    fn drop(&mut self) {
        signal_all(self.0, libc::SIGCONT);
    }
}

fn signal_all(pids: &[i32], sig: i32) {
    for &pid in pids {
        // SAFETY: kill(2) on the test's own replica's processes.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// A replica that stops answering without closing anything (SIGSTOP: a
/// hung host, a partition) loses its reads within a query timeout; no
/// request fails, and it serves again once it continues.
#[test]
fn a_stalled_replica_loses_its_reads_without_a_failed_request() {
    let (_primary, replica, _name, url, replica_url) = primary_and_replica(300);
    let srv = server_on_replica(&url, &replica_url, 1, &["--db-query-timeout", "1s"]);
    let stop = AtomicBool::new(false);
    let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let stalled = replica_processes(&replica);
    thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        orders_load(srv.addr, 4, &stop, &ok, &failed, scope);
        wait_for("load runs", || ok.load(Ordering::Relaxed) >= 50);
        signal_all(&stalled, libc::SIGSTOP);
        // Resumed however the test ends: a stopped replica would hold up
        // the clusters' shutdown.
        let _resume = ContOnDrop(&stalled);
        let on_primary = routed(&srv, "primary");
        wait_for("reads move to the primary", || {
            routed(&srv, "primary") > on_primary + 50.0
        });
        assert_eq!(serving(&srv, "replica1"), 0.0);
        signal_all(&stalled, libc::SIGCONT);
        let on_replica = routed(&srv, "replica1");
        wait_for("reads come back to the replica", || {
            routed(&srv, "replica1") > on_replica + 50.0
        });
        stop.store(true, Ordering::Relaxed);
    });
    signal_all(&stalled, libc::SIGCONT);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no failed /orders");
}
