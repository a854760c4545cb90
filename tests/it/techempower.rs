//! The TechEmpower binary (examples/techempower.rs) against the published
//! test rules, on a real PostgreSQL: what the benchmark measures must be a
//! correct implementation, or the comparison means nothing.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::{get, Response, Server};
use crate::pgfix::shared;

/// The example's binary, built by `cargo test` (and here if it is missing,
/// e.g. under `cargo test --test it`).
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let bin = profile_dir.join("examples/techempower");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "techempower"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "cargo build --example techempower failed");
    }
    assert!(bin.exists(), "no example binary at {}", bin.display());
    bin
}

/// `(id, randomNumber)` pairs of a /db, /queries or /updates answer.
fn worlds(body: &str) -> Vec<(i32, i32)> {
    body.split("{\"id\":")
        .skip(1)
        .map(|part| {
            let (id, rest) = part.split_once(",\"randomNumber\":").expect(body);
            let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
            (id.parse().unwrap(), n.parse().unwrap())
        })
        .collect()
}

fn check_common(r: &Response, content_type: &str) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("server").is_some(), "Server header");
    assert!(r.header("date").is_some(), "Date header");
    assert_eq!(r.header("content-type"), Some(content_type));
}

#[test]
fn techempower_tests_follow_the_rules() {
    let cluster = shared();
    let (name, url) = cluster.new_database("tfb");
    let bin = example_binary();
    let out = Command::new(&bin)
        .arg("setup")
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "techempower setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db_value = |id: i32| -> i32 {
        cluster
            .psql_in(
                &name,
                &format!("SELECT randomnumber FROM world WHERE id = {id}"),
            )
            .parse()
            .unwrap()
    };

    let mut cmd = Command::new(&bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--cores", "1"])
        .env("DATABASE_URL", &url);
    let srv = Server::spawn(cmd).unwrap_or_else(|e| panic!("techempower did not start: {e}"));
    let mut c = srv.connect();

    let r = c.roundtrip(get("/plaintext"));
    check_common(&r, "text/plain");
    assert_eq!(r.body, b"Hello, World!");

    let r = c.roundtrip(get("/json"));
    check_common(&r, "application/json");
    assert_eq!(r.text(), r#"{"message":"Hello, World!"}"#);

    // /db: one object, a row as it is in the table.
    for _ in 0..20 {
        let r = c.roundtrip(get("/db"));
        check_common(&r, "application/json");
        assert!(
            r.text().starts_with('{'),
            "an object, not an array: {}",
            r.text()
        );
        let w = worlds(&r.text());
        assert_eq!(w.len(), 1);
        assert!((1..=10_000).contains(&w[0].0));
        assert_eq!(w[0].1, db_value(w[0].0));
    }

    // /queries: the count is clamped to 1..=500, anything unparsable is 1.
    for (q, want) in [("20", 20), ("0", 1), ("foo", 1), ("", 1), ("501", 500)] {
        let r = c.roundtrip(get(&format!("/queries?queries={q}")));
        check_common(&r, "application/json");
        let w = worlds(&r.text());
        assert_eq!(w.len(), want, "queries={q}");
        for &(id, n) in w.iter().take(20) {
            assert_eq!(n, db_value(id), "queries={q}, id {id}");
        }
    }

    // /fortunes: the 12 rows plus one added at request time, sorted by
    // message, escaped, UTF-8 intact.
    let r = c.roundtrip(get("/fortunes"));
    check_common(&r, "text/html; charset=utf-8");
    let page = r.text();
    let messages: Vec<&str> = page
        .split("<tr><td>")
        .skip(1)
        .map(|row| {
            let msg = row.split_once("</td><td>").unwrap().1;
            msg.split_once("</td></tr>").unwrap().0
        })
        .collect();
    assert_eq!(messages.len(), 13, "{page}");
    let mut sorted = messages.clone();
    sorted.sort_unstable();
    assert_eq!(messages, sorted, "sorted by message");
    assert!(messages.contains(&"Additional fortune added at request time."));
    assert!(messages.contains(
        &"&lt;script&gt;alert(&quot;This should not be displayed in a browser alert box.&quot;);&lt;/script&gt;"
    ));
    assert!(messages.contains(&"フレームワークのベンチマーク"));
    assert!(!page.contains("<script>"));

    // /updates: every row it answers with is what the table now holds (ids
    // drawn twice in one request may keep either value, so only once-drawn).
    for _ in 0..3 {
        let r = c.roundtrip(get("/updates?queries=20"));
        check_common(&r, "application/json");
        let w = worlds(&r.text());
        assert_eq!(w.len(), 20);
        for &(id, n) in &w {
            if w.iter().filter(|(i, _)| *i == id).count() == 1 {
                assert_eq!(db_value(id), n, "updated row {id}");
            }
            assert!((1..=10_000).contains(&n));
        }
    }

    let r = c.roundtrip(get("/nothing-here"));
    assert_eq!(r.status, 404);
}
