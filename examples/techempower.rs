//! The TechEmpower Framework Benchmarks test types on ringside's library:
//! /plaintext, /json, /db, /queries, /fortunes, /updates, against the
//! standard `world` and `fortune` tables (created and filled by
//! `techempower setup`). Built to the published rules: every response has
//! Server and Date headers, JSON is serialized per request, /db and
//! /queries read random rows, /fortunes adds a fortune at request time,
//! sorts and escapes, /updates reads and writes each row.
//!
//!   cargo run --release --example techempower -- setup      (DATABASE_URL)
//!   cargo run --release --example techempower -- serve --listen 127.0.0.1:8080

use std::cell::Cell;
use std::process::ExitCode;
use std::rc::Rc;

use std::convert::Infallible;

use ringside::app::text::{json_string, push_int, Out, Staged};
use ringside::config::Config;
use ringside::http::{Exchange, HttpCore, Service, StatusCode};
use ringside::pg::{ConnSettings, Param, PgConfig, PgConn, Pool, PoolSettings, Rows, Statement};
use ringside::runtime::Server;
use smallvec::SmallVec;

static WORLD: Statement = Statement {
    sql: "SELECT id, randomnumber FROM world WHERE id = $1",
    param_types: &[23],
    read_only: true,
    fresh: false,
};
static FORTUNES: Statement = Statement {
    sql: "SELECT id, message FROM fortune",
    param_types: &[],
    read_only: true,
    fresh: false,
};
static UPDATE: Statement = Statement {
    sql: "UPDATE world SET randomnumber = t.r FROM \
          (SELECT unnest($1::text::int[]) AS id, unnest($2::text::int[]) AS r) AS t \
          WHERE world.id = t.id",
    param_types: &[25, 25],
    read_only: false,
    fresh: false,
};

pub struct Bench {
    pool: Rc<Pool>,
    rng: Cell<u64>,
}

impl Bench {
    /// The service of one core; `seed` starts its random ids.
    pub fn new(pool: Rc<Pool>, seed: u64) -> Bench {
        Bench {
            pool,
            rng: Cell::new(0x9E37_79B9_7F4A_7C15 ^ seed),
        }
    }

    /// A random id in 1..=10000 (xorshift: per core, no lock).
    fn random_id(&self) -> i32 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        (x % 10_000) as i32 + 1
    }

    fn count(ex: &Exchange<'_, '_>) -> usize {
        ex.head()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("queries=")))
            .and_then(|v| v.parse::<i64>().ok())
            .map_or(1, |n| n.clamp(1, 500) as usize)
    }

    async fn worlds(&self, n: usize) -> Result<Vec<(i32, i32)>, String> {
        let ids: Vec<[Param<'static>; 1]> =
            (0..n).map(|_| [Param::I32(self.random_id())]).collect();
        let params: Vec<&[Param<'_>]> = ids.iter().map(|p| &p[..]).collect();
        let all = self
            .pool
            .query_batch(&WORLD, &params)
            .await
            .map_err(|e| e.to_string())?;
        all.iter().map(first_world).collect()
    }
}

fn first_world(rows: &Rows) -> Result<(i32, i32), String> {
    let row = rows
        .iter()
        .next()
        .ok_or("no row")?
        .map_err(|e| e.to_string())?;
    Ok((
        row.req_i32(&rows.columns, 0).map_err(|e| e.to_string())?,
        row.req_i32(&rows.columns, 1).map_err(|e| e.to_string())?,
    ))
}

fn world_json<O: Out + ?Sized>(out: &mut O, (id, n): (i32, i32)) {
    out.put(b"{\"id\":");
    push_int(out, i64::from(id));
    out.put(b",\"randomNumber\":");
    push_int(out, i64::from(n));
    out.put_byte(b'}');
}

fn worlds_json(worlds: &[(i32, i32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(worlds.len() * 32 + 2);
    out.push(b'[');
    for (i, w) in worlds.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        world_json(&mut out, *w);
    }
    out.push(b']');
    out
}

const JSON: &[u8] = b"application/json";

/// A fortune as the page lists it, with the first eight bytes of its message
/// as a big-endian number: comparing those orders most pairs in one step,
/// where comparing the byte strings themselves was a tenth of the page's
/// instructions (a `memcmp` call per comparison of the sort).
struct Fortune<'a> {
    prefix: u64,
    id: i32,
    message: &'a [u8],
}

impl<'a> Fortune<'a> {
    fn new(id: i32, message: &'a [u8]) -> Self {
        // Zero-padded: a message shorter than eight bytes sorts before the
        // longer ones that start with it, as the byte strings do.
        let prefix = match message.first_chunk::<8>() {
            Some(head) => u64::from_be_bytes(*head),
            None => message
                .iter()
                .enumerate()
                .fold(0, |p, (i, &b)| p | u64::from(b) << (56 - 8 * i)),
        };
        Fortune {
            prefix,
            id,
            message,
        }
    }

    /// The order of the messages' bytes (UTF-8 bytes sort as the strings).
    fn cmp_messages(a: &Self, b: &Self) -> std::cmp::Ordering {
        a.prefix
            .cmp(&b.prefix)
            .then_with(|| a.message.cmp(b.message))
    }
}

impl Service for Bench {
    async fn call(&self, ex: &mut Exchange<'_, '_>) {
        match ex.path_bytes() {
            b"/plaintext" => ex.respond(StatusCode::OK, b"text/plain", b"Hello, World!"),
            b"/json" => {
                // Serialized per request, as the rules ask.
                let message = "Hello, World!";
                let _ = ex.respond_rendered(StatusCode::OK, JSON, &[], |out| {
                    out.put(b"{\"message\":");
                    json_string(message, out);
                    out.put_byte(b'}');
                    Ok::<(), Infallible>(())
                });
            }
            b"/db" => {
                let id = self.random_id();
                let world = match self.pool.query(&WORLD, &[Param::I32(id)]).await {
                    Ok(rows) => first_world(&rows),
                    Err(e) => Err(e.to_string()),
                };
                match world {
                    Ok(w) => {
                        let _ = ex.respond_rendered(StatusCode::OK, JSON, &[], |out| {
                            world_json(out, w);
                            Ok::<(), Infallible>(())
                        });
                    }
                    Err(e) => ex.respond_error(StatusCode::SERVICE_UNAVAILABLE, &e),
                }
            }
            b"/queries" => match self.worlds(Self::count(ex)).await {
                Ok(w) => ex.respond(StatusCode::OK, JSON, &worlds_json(&w)),
                Err(e) => ex.respond_error(StatusCode::SERVICE_UNAVAILABLE, &e),
            },
            b"/updates" => {
                let mut worlds = match self.worlds(Self::count(ex)).await {
                    Ok(w) => w,
                    Err(e) => return ex.respond_error(StatusCode::SERVICE_UNAVAILABLE, &e),
                };
                for w in &mut worlds {
                    w.1 = self.random_id();
                }
                // Updated in id order: concurrent updates then lock in the
                // same order and cannot deadlock.
                let mut sorted = worlds.clone();
                sorted.sort_unstable();
                let list = |f: fn(&(i32, i32)) -> i32| {
                    let items: Vec<String> = sorted.iter().map(|w| f(w).to_string()).collect();
                    format!("{{{}}}", items.join(","))
                };
                let (ids, numbers) = (list(|w| w.0), list(|w| w.1));
                match self
                    .pool
                    .query(&UPDATE, &[Param::Text(&ids), Param::Text(&numbers)])
                    .await
                {
                    Ok(_) => ex.respond(StatusCode::OK, JSON, &worlds_json(&worlds)),
                    Err(e) => ex.respond_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
                }
            }
            b"/fortunes" => {
                let rows = match self.pool.query(&FORTUNES, &[]).await {
                    Ok(r) => r,
                    Err(e) => {
                        return ex.respond_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
                    }
                };
                // On the stack: the table's dozen rows need no allocation.
                // Messages as the text bytes PostgreSQL sent (UTF-8, as the
                // session asks): escaping works on bytes, and byte order is
                // the order of the strings.
                let mut fortunes: SmallVec<[Fortune; 32]> = SmallVec::new();
                for row in rows.iter() {
                    let Ok(row) = row else { continue };
                    if let (Ok(id), Ok(msg)) = (
                        row.req_i32(&rows.columns, 0),
                        row.req_text(&rows.columns, 1),
                    ) {
                        fortunes.push(Fortune::new(id, msg));
                    }
                }
                fortunes.push(Fortune::new(
                    0,
                    b"Additional fortune added at request time.",
                ));
                fortunes.sort_unstable_by(Fortune::cmp_messages);
                // Escaped straight from the rows into the response.
                let _ = ex.respond_rendered(
                    StatusCode::OK,
                    b"text/html; charset=utf-8",
                    &[],
                    |out| {
                        let mut page = Staged::<_, 2048>::new(out);
                        page.put(b"<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table><tr><th>id</th><th>message</th></tr>");
                        for f in &fortunes {
                            page.put(b"<tr><td>");
                            push_int(&mut page, i64::from(f.id));
                            page.put(b"</td><td>");
                            page.put_html_escaped(f.message);
                            page.put(b"</td></tr>");
                        }
                        page.put(b"</table></body></html>");
                        Ok::<(), Infallible>(())
                    },
                );
            }
            _ => ex.respond_error(StatusCode::NOT_FOUND, "no such test"),
        }
    }
}

/// Creates and fills the `world` and `fortune` tables.
pub const SETUP: &str = "
DROP TABLE IF EXISTS world, fortune;
CREATE TABLE world (id integer PRIMARY KEY, randomnumber integer NOT NULL DEFAULT 0);
INSERT INTO world (id, randomnumber)
  SELECT i, 1 + floor(random() * 10000)::int FROM generate_series(1, 10000) AS i;
CREATE TABLE fortune (id integer PRIMARY KEY, message varchar(2048) NOT NULL);
INSERT INTO fortune (id, message) VALUES
 (1, 'fortune: No such file or directory'),
 (2, 'A computer scientist is someone who fixes things that aren''t broken.'),
 (3, 'After enough decimal places, nobody gives a damn.'),
 (4, 'A bad random number generator: 1, 1, 1, 1, 1, 4.33e+67, 1, 1, 1'),
 (5, 'A computer program does what you tell it to do, not what you want it to do.'),
 (6, 'Emacs is a nice operating system, but I prefer UNIX. — Tom Christaensen'),
 (7, 'Any program that runs right is obsolete.'),
 (8, 'A list is only as strong as its weakest link. — Donald Knuth'),
 (9, 'Feature: A bug with seniority.'),
 (10, 'Computers make very fast, very accurate mistakes.'),
 (11, '<script>alert(\"This should not be displayed in a browser alert box.\");</script>'),
 (12, 'フレームワークのベンチマーク');
ANALYZE world, fortune;
";

/// This example's pool, unless flags or the environment say otherwise: two
/// connections per core, 128 queries deep each, where the server's
/// defaults are four, 64 deep (the same 256 queries in flight). With
/// PostgreSQL on the server's CPU, as in `bench/techempower.sh`, fewer
/// connections mean larger batches and fewer backend wake-ups: `/db` and
/// `/fortunes` gain 3–8 %, `/queries` and `/updates` give up 4–6 %
/// (bench/targets.md, fifth session).
///
/// And no limit on requests at work: their frames are small here, and each
/// one more in flight makes the batches larger. The tuned limit (`auto`)
/// would sit at 64 with PostgreSQL this near, where `/db` gave 99–104k
/// req/s against 105–107k with all 256 connections at work (bench/targets.md,
/// eighth session).
///
/// And up to a connection's whole depth under one Sync (the server's default
/// is 32): PostgreSQL then commits one implicit transaction per 128 reads, not
/// per 32. Every statement the example batches is a single read, so the
/// batch's rules hold; `/db` gains about 2 % and `/queries` 6–9 %
/// (bench/targets.md, twelfth session).
const POOL_DEFAULTS: [(&str, &str); 4] = [
    ("RINGSIDE_DB_POOL_SIZE", "2"),
    ("RINGSIDE_DB_PIPELINE_DEPTH", "128"),
    ("RINGSIDE_DB_BATCH_MAX", "128"),
    ("RINGSIDE_MAX_ACTIVE_REQUESTS_PER_CORE", "0"),
];

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let pg = match PgConfig::from_env(|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("techempower: {e}");
            return ExitCode::from(2);
        }
    };
    let addrs: Vec<std::net::SocketAddr> = match &pg.host {
        ringside::pg::PgHost::Tcp(h) => {
            use std::net::ToSocketAddrs;
            (h.as_str(), pg.port)
                .to_socket_addrs()
                .map(Iterator::collect)
                .unwrap_or_default()
        }
        ringside::pg::PgHost::Unix(_) => Vec::new(),
    };
    if args.first().map(String::as_str) == Some("setup") {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        return rt.block_on(async {
            match PgConn::connect(&pg, &addrs, ConnSettings::default()).await {
                Ok(conn) => match conn.simple(SETUP).await {
                    Ok(_) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("techempower setup: {e}");
                        ExitCode::FAILURE
                    }
                },
                Err(e) => {
                    eprintln!("techempower setup: {e}");
                    ExitCode::FAILURE
                }
            }
        });
    }
    if args.first().map(String::as_str) == Some("serve") {
        args.remove(0);
    }
    let config = match Config::from_args_and_env(args, |k| {
        std::env::var(k).ok().or_else(|| {
            POOL_DEFAULTS
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_string())
        })
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("techempower: {e}");
            return ExitCode::from(2);
        }
    };
    let settings = PoolSettings::from_config(&config);
    let make = move |core: Rc<ringside::runtime::CoreCtx>, cfg: &Config| {
        let pool = Pool::new(pg.clone(), addrs.clone(), settings.clone());
        let bench = Bench::new(pool, core.index as u64 + 1);
        HttpCore::new(core, cfg, bench)
    };
    let server = match Server::start(&config, make) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("techempower: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("techempower: listening on http://{}", server.local_addr);
    let stopper = server.stopper();
    std::thread::spawn(move || {
        use signal_hook::consts::{SIGINT, SIGTERM};
        if let Ok(mut s) = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
            if s.forever().next().is_some() {
                stopper.stop();
            }
        }
    });
    match server.join() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("techempower: {e}");
            ExitCode::FAILURE
        }
    }
}
