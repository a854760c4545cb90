//! The PostgreSQL client against a real server over real sockets.

#![allow(
    unsafe_code,
    reason = "SIGSTOP and SIGCONT to a backend of the throwaway cluster"
)]

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringside::pg::{
    ConnSettings, Param, PgConfig, PgConn, Pool, PoolSettings, QueryError, Statement,
};

use crate::pgfix::{shared, Cluster};

/// Runs a future on a runtime of the test's own (shared with `pgtls`),
/// within 5 minutes: a connection without a deadline of its own that
/// PostgreSQL never answers fails the test instead of hanging it.
pub(crate) fn run<F: Future>(f: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime")
        .block_on(async {
            monoio::time::timeout(Duration::from_secs(300), f)
                .await
                .expect("the test's database work ends within 5 minutes")
        })
}

fn config(url: &str) -> PgConfig {
    PgConfig::from_env(|k| (k == "DATABASE_URL").then(|| url.to_string())).expect("config")
}

fn addrs(cfg: &PgConfig) -> Vec<SocketAddr> {
    cfg.resolve().unwrap()
}

async fn connect(url: &str) -> Result<Rc<PgConn>, QueryError> {
    let cfg = config(url);
    PgConn::connect(&cfg, &addrs(&cfg), ConnSettings::default()).await
}

fn pool(url: &str, connections: usize, query_timeout: Duration) -> Rc<Pool> {
    let cfg = config(url);
    let a = addrs(&cfg);
    Pool::new(
        cfg,
        a,
        PoolSettings {
            connections,
            max_waiters: 256,
            wait_timeout: Duration::from_secs(2),
            query_timeout,
            max_exclusive: connections - 1,
            ..PoolSettings::default()
        },
    )
}

/// Waits up to 10 s for `n` of the pool's connections to be up.
async fn wait_until_ready(pool: &Pool, n: usize) {
    for _ in 0..500 {
        if pool.stats().ready == n {
            return;
        }
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{n} pool connections did not come up");
}

static SELECT_INT: Statement = Statement {
    sql: "SELECT $1::int4 AS n",
    param_types: &[0],
    read_only: true,
    fresh: false,
};
static TYPES: Statement = Statement {
    sql: "SELECT 7::int2, 70000::int4, 5000000000::int8, true, 2.5::float8, 'héllo'::text, \
          '2000-01-01 00:00:01+00'::timestamptz, NULL::text",
    param_types: &[],
    read_only: true,
    fresh: false,
};
static BAD_SYNTAX: Statement = Statement {
    sql: "SELEC 1",
    param_types: &[],
    read_only: false,
    fresh: false,
};
static BACKEND_PID: Statement = Statement {
    sql: "SELECT pg_backend_pid()",
    param_types: &[],
    read_only: true,
    fresh: false,
};

const USERS: [(&str, Option<&str>); 4] = [
    ("ringside_trust", None),
    ("ringside_md5", Some("md5pass")),
    ("ringside_scram", Some("scrampass")),
    ("ringside_clear", Some("clearpass")),
];

#[test]
fn every_auth_method_over_tcp_and_unix_socket() {
    let c = shared();
    run(async {
        for (user, pass) in USERS {
            for tcp in [true, false] {
                let conn = connect(&c.url(user, pass, tcp))
                    .await
                    .unwrap_or_else(|e| panic!("{user} tcp={tcp}: {e}"));
                let rows = conn.query(&SELECT_INT, &[Param::I32(41)]).await.unwrap();
                let row = rows.iter().next().unwrap().unwrap();
                assert_eq!(
                    row.req_i32(&rows.columns, 0).unwrap(),
                    41,
                    "{user} tcp={tcp}"
                );
            }
        }
    });
}

#[test]
fn wrong_password_is_a_clear_error_without_a_retry_storm() {
    let c = shared();
    run(async {
        let err = connect(&c.url("ringside_scram", Some("nope"), true))
            .await
            .unwrap_err();
        assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
        assert!(
            err.to_string().contains("password authentication failed"),
            "{err}"
        );

        let before = c
            .server_log()
            .matches("password authentication failed for user \"ringside_md5\"")
            .count();
        let p = pool(
            &c.url("ringside_md5", Some("wrong"), true),
            2,
            Duration::from_secs(1),
        );
        let start = Instant::now();
        let err = p.query(&SELECT_INT, &[Param::I32(1)]).await.unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5), "no hang");
        assert!(err.is_transient(), "503-class: {err}");
        assert!(
            err.to_string().contains("password authentication failed"),
            "says why: {err}"
        );
        monoio::time::sleep(Duration::from_secs(2)).await;
        p.close();
        let attempts = c
            .server_log()
            .matches("password authentication failed for user \"ringside_md5\"")
            .count()
            - before;
        // Two members, backoff doubling from 100 ms: a handful in ~4 s, not hundreds.
        assert!(attempts <= 16, "{attempts} attempts: a retry storm");
    });
}

#[test]
fn startup_options_set_the_session_and_a_bad_one_is_a_clear_error() {
    let c = shared();
    run(async {
        for tcp in [true, false] {
            let url = c.url("ringside_trust", None, tcp);
            let sep = if url.contains('?') { '&' } else { '?' };
            let conn = connect(&format!(
                "{url}{sep}options=-c%20statement_timeout%3D4321%20-c%20plan_cache_mode%3Dforce_generic_plan"
            ))
            .await
            .unwrap_or_else(|e| panic!("tcp={tcp}: {e}"));
            let rows = conn
                .simple(
                    "SELECT current_setting('statement_timeout') || ' ' \
                     || current_setting('plan_cache_mode')",
                )
                .await
                .unwrap();
            let r = rows.iter().next().unwrap().unwrap();
            assert_eq!(
                r.raw(0),
                Some(&b"4321ms force_generic_plan"[..]),
                "tcp={tcp}"
            );
        }
        let url = c.url("ringside_trust", None, true);
        let Err(e) = connect(&format!("{url}?options=-c%20no_such_setting%3D1")).await else {
            panic!("PostgreSQL refuses an unknown setting");
        };
        assert!(e.to_string().contains("no_such_setting"), "{e}");
    });
}

#[test]
fn typed_decoding_and_mismatches() {
    let c = shared();
    run(async {
        let conn = connect(&c.url("ringside_trust", None, true)).await.unwrap();
        let rows = conn.query(&TYPES, &[]).await.unwrap();
        let cols = &rows.columns;
        let r = rows.iter().next().unwrap().unwrap();
        assert_eq!(r.req_i16(cols, 0).unwrap(), 7);
        assert_eq!(r.req_i32(cols, 1).unwrap(), 70000);
        assert_eq!(r.req_i64(cols, 2).unwrap(), 5_000_000_000);
        assert!(r.req_bool(cols, 3).unwrap());
        assert_eq!(r.req_f64(cols, 4).unwrap(), 2.5);
        assert_eq!(r.req_str(cols, 5).unwrap(), "héllo");
        assert_eq!(r.req_timestamptz(cols, 6).unwrap(), 946_684_801_000_000);
        assert_eq!(r.get_str(cols, 7).unwrap(), None);
        assert!(r.req_str(cols, 7).is_err(), "NULL into a required value");
        let e = r.req_i32(cols, 5).unwrap_err();
        assert!(e.to_string().contains("column 5"), "names the column: {e}");
    });
}

#[test]
fn prepared_statements_are_cached_per_connection() {
    let c = shared();
    run(async {
        let conn = connect(&c.url("ringside_trust", None, true)).await.unwrap();
        for i in 0..3 {
            conn.query(&SELECT_INT, &[Param::I32(i)]).await.unwrap();
        }
        let rows = conn
            .simple("SELECT count(*) FROM pg_prepared_statements")
            .await
            .unwrap();
        // The simple protocol answers in text.
        let r = rows.iter().next().unwrap().unwrap();
        assert_eq!(r.raw(0), Some(&b"1"[..]), "prepared once");
    });
}

#[test]
fn a_thousand_pipelined_queries_answer_in_order() {
    let c = shared();
    run(async {
        let conn = connect(&c.url("ringside_trust", None, std::env::var("XTCP").is_ok()))
            .await
            .unwrap();
        let pending: Vec<_> = (0..1000)
            .map(|i| {
                conn.start_query(&SELECT_INT, &[Param::I32(i)], "", 0)
                    .unwrap()
            })
            .collect();
        assert!(conn.in_flight() > 1, "really pipelined");
        for (i, p) in pending.into_iter().enumerate() {
            let rows = p.rows().await.unwrap();
            let r = rows.iter().next().unwrap().unwrap();
            assert_eq!(r.req_i32(&rows.columns, 0).unwrap(), i as i32);
        }
    });
}

#[test]
fn a_syntax_error_inside_a_pipeline_spares_the_others() {
    let c = shared();
    run(async {
        let conn = connect(&c.url("ringside_scram", Some("scrampass"), true))
            .await
            .unwrap();
        let a = conn
            .start_query(&SELECT_INT, &[Param::I32(1)], "", 0)
            .unwrap();
        let b = conn.start_query(&BAD_SYNTAX, &[], "", 0).unwrap();
        let c2 = conn
            .start_query(&SELECT_INT, &[Param::I32(3)], "", 0)
            .unwrap();
        let d = conn.start_query(&BAD_SYNTAX, &[], "", 0).unwrap();
        assert_eq!(a.rows().await.unwrap().len(), 1);
        let e = b.rows().await.unwrap_err();
        assert_eq!(e.sqlstate(), Some("42601"), "{e}");
        assert_eq!(c2.rows().await.unwrap().len(), 1);
        assert_eq!(d.rows().await.unwrap_err().sqlstate(), Some("42601"));
        // Still usable afterwards.
        let rows = conn.query(&SELECT_INT, &[Param::I32(9)]).await.unwrap();
        assert_eq!(
            rows.iter()
                .next()
                .unwrap()
                .unwrap()
                .req_i32(&rows.columns, 0)
                .unwrap(),
            9
        );
    });
}

#[test]
fn copy_in_commits_and_copy_fail_keeps_nothing() {
    let c = shared();
    c.psql("CREATE TABLE IF NOT EXISTS copy_test (id int, name text)");
    c.psql("GRANT ALL ON copy_test TO ringside_trust");
    c.psql("TRUNCATE copy_test");
    run(async {
        let conn = connect(&c.url("ringside_trust", None, true)).await.unwrap();
        let mut copy = conn
            .copy_in("COPY copy_test (id, name) FROM STDIN (FORMAT csv)")
            .await
            .unwrap();
        copy.send(b"1,one\n2,\"t,wo\"\n").await.unwrap();
        copy.send(b"3,three\n").await.unwrap();
        assert_eq!(copy.finish().await.unwrap(), 3);

        let mut copy = conn
            .copy_in("COPY copy_test (id, name) FROM STDIN (FORMAT csv)")
            .await
            .unwrap();
        copy.send(b"4,four\n").await.unwrap();
        copy.abort("client went away").await;
        // A value the server rejects ends the COPY with its error.
        let mut copy = conn
            .copy_in("COPY copy_test (id, name) FROM STDIN (FORMAT csv)")
            .await
            .unwrap();
        let mut err = None;
        for _ in 0..50 {
            if let Err(e) = copy.send(b"notanumber,x\n").await {
                err = Some(e);
                break;
            }
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        let err = match err {
            Some(e) => e,
            None => copy.finish().await.unwrap_err(),
        };
        assert_eq!(err.sqlstate(), Some("22P02"), "{err}");
        // The connection is in step again.
        assert_eq!(
            conn.query(&SELECT_INT, &[Param::I32(5)])
                .await
                .unwrap()
                .len(),
            1
        );
    });
    assert_eq!(
        c.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM copy_test"),
        "1,2,3"
    );
}

#[test]
fn a_terminated_backend_fails_only_its_queries_and_is_replaced() {
    let c = shared();
    run(async {
        let p = pool(
            &c.url("ringside_trust", None, true),
            1,
            Duration::from_secs(5),
        );
        let rows = p.query(&BACKEND_PID, &[]).await.unwrap();
        let pid = rows
            .iter()
            .next()
            .unwrap()
            .unwrap()
            .req_i32(&rows.columns, 0)
            .unwrap();
        c.psql(&format!("SELECT pg_terminate_backend({pid})"));
        let start = Instant::now();
        // The first query may fail (the connection just broke); within a
        // few seconds a new connection answers, with another backend.
        let mut new_pid = None;
        while start.elapsed() < Duration::from_secs(10) {
            match p.query(&BACKEND_PID, &[]).await {
                Ok(rows) => {
                    new_pid = Some(
                        rows.iter()
                            .next()
                            .unwrap()
                            .unwrap()
                            .req_i32(&rows.columns, 0)
                            .unwrap(),
                    );
                    break;
                }
                Err(e) => assert!(e.is_transient(), "a 503-class error: {e}"),
            }
            monoio::time::sleep(Duration::from_millis(50)).await;
        }
        let new_pid = new_pid.expect("reconnected");
        assert_ne!(new_pid, pid);
        assert!(p.stats().reconnects >= 1);
        p.close();
    });
}

#[test]
fn a_stopped_backend_gives_errors_at_the_deadline() {
    let c = shared();
    run(async {
        let p = pool(
            &c.url("ringside_trust", None, true),
            1,
            Duration::from_millis(500),
        );
        let rows = p.query(&BACKEND_PID, &[]).await.unwrap();
        let pid = rows
            .iter()
            .next()
            .unwrap()
            .unwrap()
            .req_i32(&rows.columns, 0)
            .unwrap();
        // The guard resumes the backend whatever happens, so the cluster can
        // stop later.
        struct Resume(i32);
        impl Drop for Resume {
            fn drop(&mut self) {
                // SAFETY: kill(2) on a backend of our own throwaway cluster.
                unsafe { libc::kill(self.0, libc::SIGCONT) };
            }
        }
        // SAFETY: kill(2) on a backend of our own throwaway cluster.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let _resume = Resume(pid);
        let start = Instant::now();
        let e = p.query(&BACKEND_PID, &[]).await.unwrap_err();
        let took = start.elapsed();
        assert_eq!(e, QueryError::Timeout);
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "{took:?}"
        );
        // The stuck connection takes no new queries; it is replaced, and the
        // next caller is answered by another backend (or fails), quickly.
        let start = Instant::now();
        match p.query(&BACKEND_PID, &[]).await {
            Ok(rows) => {
                let other = rows
                    .iter()
                    .next()
                    .unwrap()
                    .unwrap()
                    .req_i32(&rows.columns, 0)
                    .unwrap();
                assert_ne!(other, pid, "not the stopped backend");
            }
            Err(e) => assert!(e.is_transient(), "{e}"),
        }
        assert!(start.elapsed() < Duration::from_secs(4));
        p.close();
    });
}

#[test]
fn a_cluster_restart_under_load_recovers_and_hangs_no_caller() {
    let c = Cluster::private();
    let url = c.url("ringside_md5", Some("md5pass"), true);
    std::thread::scope(|s| {
        let load = s.spawn(|| {
            run(async {
                let p = pool(&url, 2, Duration::from_secs(2));
                let deadline = Instant::now() + Duration::from_secs(8);
                let (mut ok, mut failed, mut longest) = (0u32, 0u32, Duration::ZERO);
                while Instant::now() < deadline {
                    let batch: Vec<_> = (0..16)
                        .map(|i| {
                            let p = p.clone();
                            monoio::spawn(async move {
                                let t = Instant::now();
                                let r = p.query(&SELECT_INT, &[Param::I32(i)]).await;
                                (r.is_ok(), t.elapsed())
                            })
                        })
                        .collect();
                    for h in batch {
                        let (good, took) = h.await;
                        longest = longest.max(took);
                        if good {
                            ok += 1
                        } else {
                            failed += 1
                        }
                    }
                    monoio::time::sleep(Duration::from_millis(20)).await;
                }
                // After the restart, the pool answers again.
                let rows = p.query(&SELECT_INT, &[Param::I32(77)]).await;
                let reconnects = p.stats().reconnects;
                p.close();
                (ok, failed, longest, rows.is_ok(), reconnects)
            })
        });
        std::thread::sleep(Duration::from_secs(2));
        c.pg_ctl(&["-m", "fast", "restart"]);
        let (ok, failed, longest, recovered, reconnects) = load.join().unwrap();
        // Callers in flight at the restart fail fast; later ones wait
        // (boundedly) for the reconnect.
        assert!(
            reconnects >= 2,
            "both connections were replaced ({reconnects})"
        );
        assert!(ok > 0, "ok={ok} failed={failed}");
        assert!(
            longest < Duration::from_secs(5),
            "a caller waited {longest:?}"
        );
        assert!(recovered, "the pool recovered");
    });
}

static DIVIDE: Statement = Statement {
    sql: "SELECT 1000 / $1::int4",
    param_types: &[23],
    read_only: true,
    fresh: false,
};

/// Statements of different requests queued in the same turn share one Sync
/// (`--db-batch`). A division by zero among them fails only its own
/// request: the server skips the rest of that batch, and each skipped one
/// runs again alone, so every other request gets its own answer.
#[test]
fn a_failure_in_a_batch_fails_only_its_own_request() {
    let cluster = shared();
    let url = cluster.url("ringside_md5", Some("md5pass"), true);
    run(async {
        let pool = pool(&url, 2, Duration::from_secs(10));
        wait_until_ready(&pool, 2).await;
        for round in 0..5 {
            // 40 requests at once; every seventh divides by zero.
            let tasks: Vec<_> = (0..40)
                .map(|i: i32| {
                    let pool = pool.clone();
                    let d = if i % 7 == 3 { 0 } else { i + 1 };
                    monoio::spawn(async move {
                        let r = pool.query(&DIVIDE, &[Param::I32(d)]).await;
                        (
                            d,
                            r.map(|rows| {
                                let row = rows.iter().next().unwrap().unwrap();
                                row.req_i32(&rows.columns, 0).unwrap()
                            }),
                        )
                    })
                })
                .collect();
            for t in tasks {
                match t.await {
                    (0, Err(e)) => assert_eq!(e.sqlstate(), Some("22012"), "round {round}: {e}"),
                    (0, Ok(v)) => panic!("round {round}: 1000 / 0 gave {v}"),
                    (d, r) => assert_eq!(r, Ok(1000 / d), "round {round}, divisor {d}"),
                }
            }
        }
        let stats = pool.stats();
        println!("batch retries: {}", stats.batch_retries);
        // Statements really were batched, and skipped ones run again.
        assert!(
            stats.batch_retries > 0,
            "no statement was skipped: were they batched?"
        );
        pool.close();
    });
}

/// The backend that answered each of `n` statements queued at once, as a
/// count per backend. All are spawned before any runs: each queues its
/// statement in the same turn, before the writer sends (monoio's run queue
/// is first in, first out, and a woken writer goes to its back).
async fn backends_of_one_turn(pool: &Rc<Pool>, n: usize) -> std::collections::BTreeMap<i32, usize> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let pool = pool.clone();
            monoio::spawn(async move {
                let rows = pool.query(&BACKEND_PID, &[]).await.expect("query");
                let row = rows.iter().next().unwrap().unwrap();
                row.req_i32(&rows.columns, 0).unwrap()
            })
        })
        .collect();
    let mut per_backend = std::collections::BTreeMap::new();
    for t in tasks {
        *per_backend.entry(t.await).or_default() += 1;
    }
    per_backend
}

/// Statements queued in one turn of the loop share one write while it is
/// being gathered (up to `--db-batch-max`, 32), rather than being spread one
/// by one over the pool's connections: fewer sends, fewer backend wake-ups.
#[test]
fn statements_queued_together_share_one_write_up_to_a_batch() {
    let cluster = shared();
    let url = cluster.url("ringside_md5", Some("md5pass"), true);
    run(async {
        let pool = pool(&url, 4, Duration::from_secs(10));
        wait_until_ready(&pool, 4).await;
        let few = backends_of_one_turn(&pool, 8).await;
        assert_eq!(few.len(), 1, "8 statements of one turn went to {few:?}");
        // Past a batch's worth the next write starts on another connection.
        let many = backends_of_one_turn(&pool, 40).await;
        assert!(
            many.len() >= 2,
            "40 statements all went to one connection: {many:?}"
        );
        assert!(
            many.values().all(|&n| n <= 32),
            "one write took more than a batch: {many:?}"
        );
        pool.close();

        // A smaller bound spreads sooner.
        let cfg = config(&url);
        let a = addrs(&cfg);
        let small = Pool::new(
            cfg,
            a,
            PoolSettings {
                connections: 4,
                conn: ConnSettings {
                    max_batch: 4,
                    ..ConnSettings::default()
                },
                ..PoolSettings::default()
            },
        );
        wait_until_ready(&small, 4).await;
        let spread = backends_of_one_turn(&small, 8).await;
        assert!(
            spread.len() >= 2 && spread.values().all(|&n| n <= 4),
            "8 statements with a bound of 4 went to {spread:?}"
        );
        small.close();
    });
}

/// While the tuned request limit probes the no-load round trip, statements
/// are not joined into one write: the probe takes each statement's round trip
/// as a no-load time, and one that waited behind others' executions in the
/// same backend would not be. Once the probe ends, joins resume.
#[test]
fn a_no_load_probe_spreads_statements_one_per_connection() {
    use ringside::runtime::request_limit::RequestLimit;

    let cluster = shared();
    let url = cluster.url("ringside_md5", Some("md5pass"), true);
    run(async {
        let pool = pool(&url, 4, Duration::from_secs(10));
        wait_until_ready(&pool, 4).await;
        let limit = Rc::new(RequestLimit::default());
        limit.tune_for_pool(4, 64);
        pool.report_round_trips_to(limit.clone());
        // A tuner's first round trip starts its first probe.
        pool.query(&BACKEND_PID, &[]).await.expect("query");
        assert!(limit.is_probing(), "the first round trip started no probe");
        let probed = backends_of_one_turn(&pool, 8).await;
        assert_eq!(
            probed.len(),
            4,
            "8 statements of one turn during a probe went to {probed:?}"
        );
        // A probe ends at its bound in time (500 ms) with the next round trip.
        monoio::time::sleep(Duration::from_millis(600)).await;
        pool.query(&BACKEND_PID, &[]).await.expect("query");
        assert!(!limit.is_probing(), "the probe did not end");
        let joined = backends_of_one_turn(&pool, 8).await;
        assert_eq!(
            joined.len(),
            1,
            "8 statements of one turn after the probe went to {joined:?}"
        );
        pool.close();
    });
}

static SLEEP_HALF_SECOND: Statement = Statement {
    sql: "SELECT pg_sleep(0.5)",
    param_types: &[],
    read_only: false,
    fresh: false,
};

/// A coalesced read whose leader goes away keeps the bound of one read
/// from its own arrival (pool wait plus query deadline): it does not wait
/// past it for the leader, nor start a fresh read once it has passed.
/// Here the leader is never driven after its first step and is dropped
/// well after the joiner's bound; the joiner must end "timed out" (before,
/// it waited on and then ran its own read, which succeeded).
#[test]
fn a_coalesced_read_whose_leader_goes_away_ends_at_its_own_bound() {
    use std::future::poll_fn;
    use std::task::Poll;

    let cluster = shared();
    let url = cluster.url("ringside_md5", Some("md5pass"), true);
    run(async {
        let cfg = config(&url);
        let a = addrs(&cfg);
        // One connection, one statement at a time: a statement queued
        // behind another waits, unsent, in the pool's queue.
        let pool = Pool::new(
            cfg,
            a,
            PoolSettings {
                connections: 1,
                max_in_flight: 1,
                max_waiters: 16,
                wait_timeout: Duration::from_secs(1),
                query_timeout: Duration::from_secs(1),
                max_exclusive: 0,
                coalesce: true,
                ..PoolSettings::default()
            },
        );
        assert!(pool.query(&SELECT_INT, &[Param::I32(1)]).await.is_ok());
        // The one slot is busy for half a second.
        let busy = {
            let pool = pool.clone();
            monoio::spawn(async move { pool.query(&SLEEP_HALF_SECOND, &[]).await.is_ok() })
        };
        monoio::time::sleep(Duration::from_millis(100)).await;
        // The leader: one step, which opens its execution to joiners and
        // queues it for the slot; it is not driven again.
        let mut leader = Box::pin(pool.query_shared(&SELECT_INT, &[Param::I32(7)], 0, |_| Ok(())));
        poll_fn(|cx| {
            assert!(leader.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        // The joiner: its bound is 2 s from now.
        let joiner = {
            let pool = pool.clone();
            monoio::spawn(async move {
                pool.query_shared(&SELECT_INT, &[Param::I32(7)], 0, |_| Ok(()))
                    .await
            })
        };
        // Well past the joiner's bound (the slot has long been free), the
        // leader goes away.
        monoio::time::sleep(Duration::from_millis(3500)).await;
        drop(leader);
        assert!(busy.await, "the statement that held the slot ran");
        assert_eq!(joiner.await, Err(QueryError::Timeout));
        pool.close();
    });
}
