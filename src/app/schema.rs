//! The schema (embedded, versioned migrations), demo data, and the
//! article's address file. These run from the command line (`ringside
//! migrate`, `seed`, `gen-contacts`), not on a serving core.

use std::io::{self, Write};
use std::rc::Rc;

use crate::pg::{PgConn, QueryError};

/// (version, name, SQL). Append only: an applied migration never changes.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "orders, imports, contacts",
    "CREATE TABLE orders (
        id bigserial PRIMARY KEY,
        title text NOT NULL,
        customer text,
        amount_cents bigint NOT NULL DEFAULT 0 CHECK (amount_cents >= 0),
        currency char(3) NOT NULL DEFAULT 'EUR',
        status text NOT NULL DEFAULT 'new'
            CHECK (status IN ('new', 'paid', 'shipped', 'cancelled')),
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE imports (
        id bigserial PRIMARY KEY,
        started_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        rows bigint
    );
    -- The upload sets ringside.import_id for its transaction; the column
    -- default stamps every copied row with it.
    CREATE TABLE contacts (
        id bigserial PRIMARY KEY,
        import_id bigint NOT NULL
            DEFAULT current_setting('ringside.import_id')::bigint
            REFERENCES imports (id),
        name text NOT NULL,
        email text,
        street text,
        city text,
        zip text,
        country text
    );
    CREATE INDEX contacts_import_id_idx ON contacts (import_id);",
)];

/// Applies the migrations not applied yet, each in its own transaction,
/// under an advisory lock (two instances starting together do not race).
/// Returns the versions applied.
pub async fn migrate(conn: &Rc<PgConn>) -> Result<Vec<i32>, QueryError> {
    conn.simple(
        "CREATE TABLE IF NOT EXISTS ringside_schema_migrations (
            version int PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    conn.simple("SELECT pg_advisory_lock(727265)").await?;
    let result = apply(conn).await;
    let _ = conn.simple("SELECT pg_advisory_unlock(727265)").await;
    result
}

async fn apply(conn: &Rc<PgConn>) -> Result<Vec<i32>, QueryError> {
    let rows = conn
        .simple("SELECT coalesce(max(version), 0) FROM ringside_schema_migrations")
        .await?;
    let current: i32 = rows
        .iter()
        .next()
        .and_then(|r| r.ok())
        .and_then(|r| std::str::from_utf8(r.raw(0)?).ok()?.parse().ok())
        .unwrap_or(0);
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let script = format!(
            "BEGIN; {sql}; INSERT INTO ringside_schema_migrations (version, name) \
             VALUES ({version}, '{}'); COMMIT",
            name.replace('\'', "''")
        );
        if let Err(e) = conn.simple(&script).await {
            let _ = conn.simple("ROLLBACK").await;
            return Err(e);
        }
        applied.push(*version);
    }
    Ok(applied)
}

/// Titles for demo orders: plain, ones that need HTML escaping, and
/// non-ASCII text.
const TITLES: [&str; 8] = [
    "Espresso machine",
    "Crème brûlée set für Zoë",
    "<script>alert(\"order\")</script>",
    "Tom & Jerry's \"anvil\"",
    "東京の弁当箱",
    "Ñandú plush 🦆",
    "Plain notebook",
    "Garden hose, 20 m",
];

/// Fills `orders` up to `count` rows (it adds only what is missing, so a
/// second run changes nothing). Returns the rows added.
pub async fn seed_orders(conn: &Rc<PgConn>, count: u64) -> Result<u64, QueryError> {
    let rows = conn.simple("SELECT count(*) FROM orders").await?;
    let have: u64 = rows
        .iter()
        .next()
        .and_then(|r| r.ok())
        .and_then(|r| std::str::from_utf8(r.raw(0)?).ok()?.parse().ok())
        .unwrap_or(0);
    if have >= count {
        return Ok(0);
    }
    let titles: Vec<String> = TITLES
        .iter()
        .map(|t| format!("'{}'", t.replace('\'', "''")))
        .collect();
    let sql = format!(
        "INSERT INTO orders (title, customer, amount_cents, currency, status, created_at)
         SELECT (ARRAY[{titles}])[1 + i % {n}] || ' #' || i,
                'customer-' || (i % 997),
                (i * 7919) % 100000,
                (ARRAY['EUR', 'USD', 'JPY'])[1 + i % 3],
                (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + i % 4],
                now() - make_interval(mins => i::int)
         FROM generate_series({from}, {to}) AS i",
        titles = titles.join(", "),
        n = TITLES.len(),
        from = have + 1,
        to = count,
    );
    let rows = conn.simple(&sql).await?;
    Ok(rows.affected().unwrap_or(0))
}

/// Writes the article's address file: a header and `rows` contacts, with
/// quoted fields (commas, quotes, a line break) among them. With
/// `bad_line`, that physical line (the header is line 1) has a field
/// missing. Returns the bytes written.
pub fn write_contacts(out: &mut impl Write, rows: u64, bad_line: Option<u64>) -> io::Result<u64> {
    const FIRST: [&str; 8] = [
        "Ada", "Grace", "Linus", "Zoë", "José", "Ngozi", "Hiroshi", "Maëlle",
    ];
    const LAST: [&str; 6] = [
        "Lovelace", "Hopper", "O'Brien", "Müller", "Nakamura", "Okafor",
    ];
    const CITIES: [(&str, &str); 6] = [
        ("Berlin", "DE"),
        ("Lyon", "FR"),
        ("Osaka", "JP"),
        ("Lagos", "NG"),
        ("Porto", "PT"),
        ("Boston", "US"),
    ];
    let mut written = 0u64;
    let mut w = |s: &str| -> io::Result<()> {
        written += s.len() as u64;
        out.write_all(s.as_bytes())
    };
    w("name,email,street,city,zip,country\n")?;
    for i in 0..rows {
        let line = i + 2;
        let first = FIRST[(i % 8) as usize];
        let last = LAST[(i % 6) as usize];
        let (city, country) = CITIES[(i % 6) as usize];
        // Some streets need quoting: a comma, a quote, once in a while a
        // line break inside the field.
        let street = match i % 50 {
            0 => format!("\"{} Main St, Apt {}\"", i % 900 + 1, i % 20 + 1),
            1 => format!("\"The \"\"Old\"\" Mill {}\"", i % 99),
            _ => format!("{} Harbour Road", i % 900 + 1),
        };
        let record = if bad_line == Some(line) {
            format!("{first} {last},{first}.{i}@example.com,{street},{city}\n")
        } else {
            format!(
                "{first} {last},{first}.{i}@example.com,{street},{city},{:05},{country}\n",
                (i * 37) % 100_000
            )
        };
        w(&record)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringside_wire::csv::{CsvValidator, Limits};

    #[test]
    fn generated_contacts_validate_and_the_bad_line_is_found() {
        let mut good = Vec::new();
        write_contacts(&mut good, 1000, None).unwrap();
        let mut v = CsvValidator::new(Limits::default());
        let mut out = bytes::BytesMut::new();
        v.push(&good, &mut out).unwrap();
        v.finish(&mut out).unwrap();
        assert_eq!(v.records(), 1000);

        let mut bad = Vec::new();
        write_contacts(&mut bad, 1000, Some(500)).unwrap();
        let mut v = CsvValidator::new(Limits::default());
        let err = v.push(&bad, &mut out).unwrap_err();
        assert_eq!(err.line, 500);
    }
}
