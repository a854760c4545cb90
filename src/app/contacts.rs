//! POST /contacts: the article's CSV upload, streamed into PostgreSQL.
//!
//! The body is read a chunk at a time; whole CSV records are validated
//! (`ringside_wire::csv`) and sent as COPY data, and the next chunk is read
//! only once the previous data was written to PostgreSQL. A database that
//! inserts slower than the client sends therefore fills the socket to
//! PostgreSQL, then our read stops, then the client's TCP window closes:
//! back-pressure end to end, with memory bounded by the chunk size. The
//! COPY runs inside a transaction: any bad record, a value the database
//! rejects, or a client that goes away rolls the whole upload back.

use bytes::BytesMut;
use ringside_wire::csv::{CsvError, CsvValidator, Limits};

use crate::http::{BodyError, Exchange, StatusCode};
use crate::pg::{CopyIn, Held, PgError, QueryError};

use super::{pool_or_503, respond_db_error, App};
use crate::metrics::CoreMetrics;

/// The columns an upload may name; `name` is required.
pub const COLUMNS: [&str; 6] = ["name", "email", "street", "city", "zip", "country"];

/// Why an upload failed, and how to answer.
enum Failure {
    Body(BodyError),
    Csv(CsvError),
    Header(String),
    Db(QueryError),
}

pub async fn upload(app: &App, ex: &mut Exchange<'_, '_>) {
    let is_csv = ex
        .head()
        .header("content-type")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/csv"));
    if !is_csv {
        return ex.respond_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the addresses as Content-Type: text/csv",
        );
    }
    let Some(pool) = pool_or_503(app, ex) else {
        return;
    };
    ex.set_body_limit(app.settings.max_upload_bytes);
    ex.set_body_read_size(app.settings.upload_chunk_bytes);
    let held = match pool.exclusive().await {
        Ok(h) => h,
        Err(e) => return respond_db_error(app, ex, &e),
    };
    let mut copy = None;
    let mut bytes = 0;
    match run(app, ex, &held, &mut copy, &mut bytes).await {
        Ok((import_id, rows)) => {
            held.release();
            CoreMetrics::add(&app.metrics.rows_imported, rows);
            CoreMetrics::add(&app.metrics.bytes_imported, bytes);
            let body = format!("{{\"import_id\":{import_id},\"rows\":{rows}}}\n");
            ex.respond(StatusCode(201), b"application/json", body.as_bytes());
        }
        Err(failure) => {
            // Nothing of the upload may remain: end the COPY, roll back,
            // and only then give the connection back.
            if let Some(c) = copy.take() {
                c.abort("upload rejected").await;
            }
            if held.simple("ROLLBACK").await.is_ok() {
                held.release();
            }
            CoreMetrics::add(&app.metrics.imports_failed, 1);
            answer(app, ex, failure);
        }
    }
}

fn answer(app: &App, ex: &mut Exchange<'_, '_>, failure: Failure) {
    match failure {
        Failure::Body(e) => ex.respond_body_error(e),
        Failure::Csv(e) => ex.respond_error(StatusCode::BAD_REQUEST, &e.to_string()),
        Failure::Header(msg) => ex.respond_error(StatusCode::BAD_REQUEST, &msg),
        Failure::Db(QueryError::Pg(PgError::Db(db))) if is_data_error(&db.code) => {
            // PostgreSQL counts the lines of the COPY data, which starts
            // after our header line.
            let msg = match db.copy_line() {
                Some(line) => format!("line {}: {}", line + 1, db.message),
                None => db.message.clone(),
            };
            ex.respond_error(StatusCode::UNPROCESSABLE, &msg)
        }
        Failure::Db(e) => respond_db_error(app, ex, &e),
    }
}

/// Data exceptions (22xxx) and integrity violations (23xxx): the upload's
/// content, not the server, is at fault.
fn is_data_error(code: &str) -> bool {
    code.starts_with("22") || code.starts_with("23")
}

/// The upload inside its transaction; returns the import id and row count.
async fn run(
    app: &App,
    ex: &mut Exchange<'_, '_>,
    held: &Held,
    copy: &mut Option<CopyIn>,
    bytes: &mut u64,
) -> Result<(i64, u64), Failure> {
    let rows = held
        .simple("BEGIN; INSERT INTO imports DEFAULT VALUES RETURNING id")
        .await
        .map_err(Failure::Db)?;
    let import_id: i64 = rows
        .iter()
        .next()
        .and_then(|r| r.ok())
        .and_then(|r| {
            r.raw(0)
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        })
        .ok_or_else(|| Failure::Db(QueryError::Unavailable("no import id".into())))?;
    // The rows get their import id from the column default, which reads
    // this transaction-local setting.
    held.simple(&format!(
        "SELECT set_config('ringside.import_id', '{import_id}', true)"
    ))
    .await
    .map_err(Failure::Db)?;

    let chunk = app.settings.upload_chunk_bytes;
    let mut csv = CsvValidator::new(Limits::default());
    let mut out = BytesMut::with_capacity(chunk + Limits::DEFAULT_MAX_RECORD_BYTES);
    loop {
        let data = match ex.body_chunk().await {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e) => return Err(Failure::Body(e)),
        };
        *bytes += data.len() as u64;
        let progress = csv.push(&data, &mut out).map_err(Failure::Csv)?;
        if progress.header_ready {
            *copy = Some(start_copy(&csv, held).await?);
        }
        if out.len() >= chunk {
            send(copy, &mut out).await?;
        }
    }
    if csv.finish(&mut out).map_err(Failure::Csv)?.header_ready {
        // A header without a final newline completes only here.
        *copy = Some(start_copy(&csv, held).await?);
    }
    if copy.is_none() {
        return Err(Failure::Header(
            "the upload is empty: a header row naming the columns is required".into(),
        ));
    }
    send(copy, &mut out).await?;
    let rows = copy
        .take()
        .expect("COPY started")
        .finish()
        .await
        .map_err(Failure::Db)?;
    held.simple(&format!(
        "UPDATE imports SET rows = {rows}, finished_at = now() WHERE id = {import_id}; COMMIT"
    ))
    .await
    .map_err(Failure::Db)?;
    Ok((import_id, rows))
}

/// Starts the COPY once the header named its columns.
async fn start_copy(csv: &CsvValidator, held: &Held) -> Result<CopyIn, Failure> {
    let columns = check_header(csv)?;
    let sql = format!("COPY contacts ({columns}) FROM STDIN (FORMAT csv)");
    held.copy_in(&sql).await.map_err(Failure::Db)
}

/// Sends the validated records gathered so far; returns once they were
/// written to PostgreSQL.
async fn send(copy: &mut Option<CopyIn>, out: &mut BytesMut) -> Result<(), Failure> {
    if out.is_empty() {
        return Ok(());
    }
    if let Some(c) = copy.as_mut() {
        c.send(out).await.map_err(Failure::Db)?;
    }
    out.clear();
    Ok(())
}

/// The header must name known columns, each once, `name` among them.
/// Returns the column list for COPY, in the header's order.
fn check_header(csv: &CsvValidator) -> Result<String, Failure> {
    let header = csv.header().expect("header ready");
    let mut seen = Vec::with_capacity(header.columns.len());
    for col in &header.columns {
        let lower = col.to_ascii_lowercase();
        if !COLUMNS.contains(&lower.as_str()) {
            return Err(Failure::Header(format!(
                "line 1: unknown column {col:?} (known: {})",
                COLUMNS.join(", ")
            )));
        }
        if seen.contains(&lower) {
            return Err(Failure::Header(format!(
                "line 1: column {col:?} appears twice"
            )));
        }
        seen.push(lower);
    }
    if !seen.iter().any(|c| c == "name") {
        return Err(Failure::Header(
            "line 1: the required column \"name\" is missing".into(),
        ));
    }
    Ok(seen.join(", "))
}
