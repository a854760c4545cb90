//! GET /orders (the article's page), /orders.json, /orders/export.csv.

use bytes::{Bytes, BytesMut};
use monoio::time::Instant;

use crate::http::{BodyOut, Exchange, Out, StatusCode};
use crate::pg::{Column, Param, PgError, QueryError, Row, Rows, Statement};

use super::text::{csv_field, json_string_bytes, push_int, rfc3339_micros, Staged};
use super::{query_param, respond_db_error, router_or_503, App};

/// The page's size unless `?limit=N` says otherwise; a literal, so that
/// the default page's statement can carry it.
macro_rules! default_limit {
    () => {
        200
    };
}
pub const DEFAULT_LIMIT: i64 = default_limit!();
pub const MAX_LIMIT: i64 = 1000;

/// The article's query, with an order so the page is stable, for the
/// default page: the limit is written in. With `LIMIT $1`, PostgreSQL's
/// plan cache costs the generic plan for a tenth of the table, finds it
/// dearer than a custom plan for 200 rows, and so plans the query again at
/// every execution: 13–18 % of its CPU per page (`perf`, bench/targets.md).
/// A statement without parameters is planned once.
pub static ORDER_TITLES: Statement = Statement {
    sql: concat!(
        "SELECT title FROM orders ORDER BY id LIMIT ",
        default_limit!()
    ),
    param_types: &[],
    read_only: true,
    fresh: false,
};

/// The same query for any other page size (`?limit=N`), planned per
/// execution as above.
pub static ORDER_TITLES_LIMITED: Statement = Statement {
    sql: "SELECT title FROM orders ORDER BY id LIMIT $1",
    param_types: &[20],
    read_only: true,
    fresh: false,
};

static ORDER_EXPORT: Statement = Statement {
    sql: "SELECT id, title, customer, amount_cents, currency, status, created_at \
          FROM orders ORDER BY id",
    param_types: &[],
    read_only: true,
    fresh: false,
};

const PAGE_HEAD: &[u8] = b"<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
<title>Orders</title></head>\n<body>\n<h1>Orders</h1>\n<table>\n<thead><tr><th>Title</th></tr></thead>\n<tbody>\n";
const PAGE_TAIL: &[u8] = b"</tbody>\n</table>\n</body>\n</html>\n";
/// About what a row takes on the page: its markup and a title of common
/// length (a longer page grows the buffer once more).
const ROW_BYTES_HINT: usize = 64;
/// Room for the response head, written after the body.
const HEAD_BYTES_HINT: usize = 256;

fn wants_json(ex: &Exchange<'_, '_>) -> bool {
    ex.path() == "/orders.json"
        || ex
            .head()
            .header("accept")
            .and_then(|a| std::str::from_utf8(a).ok())
            .is_some_and(|a| a.contains("application/json"))
}

/// Runs the article's query and renders the titles straight from the rows
/// into one buffer: an HTML table, or a JSON array.
pub async fn list(app: &App, ex: &mut Exchange<'_, '_>) {
    let limit = match query_param(ex.head().query(), "limit") {
        None => DEFAULT_LIMIT,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return ex.respond_error(
                    StatusCode::BAD_REQUEST,
                    &format!("limit must be a whole number from 1 to {MAX_LIMIT}"),
                )
            }
        },
    };
    let Some(db) = router_or_503(app, ex) else {
        return;
    };
    let limit_param = [Param::I64(limit)];
    let (stmt, params): (&'static Statement, &[Param<'_>]) = if limit == DEFAULT_LIMIT {
        (&ORDER_TITLES, &[])
    } else {
        (&ORDER_TITLES_LIMITED, &limit_param)
    };
    let json = wants_json(ex);
    let ctype: &[u8] = if json {
        b"application/json"
    } else {
        b"text/html; charset=utf-8"
    };
    if db.coalesces() {
        // Identical pages requested while one is still waiting to be sent
        // share its execution and its one rendering.
        let shared = db
            .query_shared(stmt, params, u64::from(json), |rows| {
                render_shared(rows, json)
            })
            .await;
        return match shared {
            Ok(body) => ex.respond_with(StatusCode::OK, ctype, &[("Vary", b"Accept")], &body),
            Err(e) => respond_db_error(app, ex, &e),
        };
    }
    let rows = match db.query(stmt, params).await {
        Ok(rows) => rows,
        Err(e) => return respond_db_error(app, ex, &e),
    };
    // Rendered from the rows in the PostgreSQL read buffer straight into
    // the connection's write buffer.
    let rendered = ex.respond_rendered(StatusCode::OK, ctype, &[("Vary", b"Accept")], |out| {
        render_titles(&rows, json, out)
    });
    if let Err(e) = rendered {
        respond_db_error(app, ex, &QueryError::Pg(e));
    }
}

/// The page rendered once into its own buffer, for every request that
/// shares it.
fn render_shared(rows: &Rows, json: bool) -> Result<Bytes, QueryError> {
    let mut body = BytesMut::with_capacity(16 << 10);
    render_titles(rows, json, &mut BodyOut::Write(&mut body)).map_err(QueryError::Pg)?;
    Ok(body.freeze())
}

/// The titles as an HTML table, or a JSON array.
fn render_titles(rows: &Rows, json: bool, out: &mut BodyOut<'_>) -> Result<(), PgError> {
    // Staged: a row's pieces are short; the write buffer sees a few large
    // appends per page instead of several small ones per row.
    let mut page = Staged::<_, 4096>::new(out);
    // The write buffer is lent small (--read-buffer-bytes): grown once to
    // about the page's size, not doubled there with a copy each time.
    page.reserve(HEAD_BYTES_HINT + PAGE_HEAD.len() + PAGE_TAIL.len() + rows.len() * ROW_BYTES_HINT);
    page.put(if json { b"[" } else { PAGE_HEAD });
    for (i, title) in rows.req_texts(0)?.enumerate() {
        // Copied through as PostgreSQL sent it (UTF-8), escaped byte-wise.
        let title = title?;
        if json {
            if i > 0 {
                page.put_byte(b',');
            }
            json_string_bytes(title, &mut page);
        } else {
            page.put(b"<tr><td>");
            page.put_html_escaped(title);
            page.put(b"</td></tr>\n");
        }
    }
    page.put(if json { b"]" } else { PAGE_TAIL });
    Ok(())
}

/// Streams every order as CSV. Rows come from a portal a batch at a time,
/// and the next batch is fetched only once the previous one was written
/// to the client: a slow reader slows the query, memory stays flat.
pub async fn export(app: &App, ex: &mut Exchange<'_, '_>) {
    let Some(db) = router_or_503(app, ex) else {
        return;
    };
    // Held connections are few (--max-uploads-per-core): the export, like
    // an upload, ends by its deadline however slowly the client reads.
    let deadline = Instant::now() + app.settings.upload_timeout;
    // A read-only transaction (portals live until it ends): on a replica
    // when one serves.
    let held = match db.read_transaction().await {
        Ok(h) => h,
        Err(e) => return respond_db_error(app, ex, &e),
    };
    let batch = app.settings.export_batch_rows as i32;
    let mut next = Some(held.open_portal(&ORDER_EXPORT, &[], batch).await);
    let mut started = false;
    loop {
        if started && Instant::now() > deadline {
            ex.abort_connection();
            return;
        }
        let fetched = match next.take() {
            Some(first) => first,
            None => held.fetch_more(&ORDER_EXPORT, batch).await,
        };
        let rows = match fetched {
            Ok(r) => r,
            Err(e) => {
                if started {
                    // Headers are out: all we can do is cut the body short,
                    // which the client sees as an incomplete chunked stream.
                    ex.abort_connection();
                } else {
                    respond_db_error(app, ex, &e);
                }
                return;
            }
        };
        if !started {
            ex.start_stream(
                StatusCode::OK,
                b"text/csv; charset=utf-8",
                &[(
                    "Content-Disposition",
                    b"attachment; filename=\"orders.csv\"",
                )],
            );
        }
        let header = !started;
        started = true;
        // Each batch is one chunk, rendered from the rows in the read
        // buffer straight into the connection's write buffer.
        let queued = ex.queue_rendered_chunk(|out| {
            if header {
                out.put(b"id,title,customer,amount_cents,currency,status,created_at\n");
            }
            rows.iter()
                .try_for_each(|row| render_csv_row(row, &rows.columns, out))
        });
        if queued.is_err() {
            ex.abort_connection();
            return;
        }
        if ex.flush().await.is_err() {
            // The client went away; the held connection is closed on drop
            // (mid-transaction), which ends the portal.
            return;
        }
        if !rows.suspended {
            break;
        }
    }
    ex.finish_stream();
    if held.simple("COMMIT").await.is_ok() {
        held.release();
    }
}

fn render_csv_row(
    row: Result<Row<'_>, PgError>,
    cols: &[Column],
    out: &mut BodyOut<'_>,
) -> Result<(), PgError> {
    let row = row?;
    push_int(out, row.req_i64(cols, 0)?);
    out.put_byte(b',');
    csv_field(row.req_str(cols, 1)?, out);
    out.put_byte(b',');
    if let Some(c) = row.get_str(cols, 2)? {
        csv_field(c, out);
    }
    out.put_byte(b',');
    push_int(out, row.req_i64(cols, 3)?);
    out.put_byte(b',');
    csv_field(row.req_str(cols, 4)?, out);
    out.put_byte(b',');
    csv_field(row.req_str(cols, 5)?, out);
    out.put_byte(b',');
    rfc3339_micros(row.req_timestamptz(cols, 6)?, out);
    out.put_byte(b'\n');
    Ok(())
}
