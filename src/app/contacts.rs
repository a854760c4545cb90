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
use monoio::time::Instant;
use ringside_wire::csv::{CsvError, CsvValidator, Limits};

use crate::http::{BodyError, Exchange, StatusCode};
use crate::pg::{CopyIn, Held, PgError, QueryError};

use super::metrics::CoreMetrics;
use super::{pool_or_503, respond_db_error, App};

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
    let settings = &app.settings;
    ex.set_body_limit(settings.max_upload_bytes);
    ex.set_body_read_size(settings.upload_chunk_bytes);
    let deadline = Instant::now() + settings.upload_timeout;
    ex.set_body_deadline(deadline);

    // The first batch arrives before a database connection is taken: a
    // client that trickles its first bytes holds nothing but its socket.
    let mut batches = Batches::new(settings.upload_chunk_bytes);
    let columns = match batches.fill(ex).await.and_then(|()| batches.columns()) {
        Ok(columns) => columns,
        Err(failure) => {
            CoreMetrics::add(&app.metrics.imports_failed, 1);
            return answer(app, ex, failure);
        }
    };
    let held = match pool.exclusive().await {
        Ok(h) => h,
        Err(e) => {
            CoreMetrics::add(&app.metrics.imports_failed, 1);
            return respond_db_error(app, ex, &e);
        }
    };
    let mut copy = None;
    let run = run(app, ex, deadline, &held, &columns, &mut batches, &mut copy);
    // The whole upload, database waits included, ends by its deadline.
    let outcome = match monoio::time::timeout_at(deadline, run).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Db(QueryError::Timeout)),
    };
    match outcome {
        Ok((import_id, rows)) => {
            held.release();
            CoreMetrics::add(&app.metrics.rows_imported, rows);
            CoreMetrics::add(&app.metrics.bytes_imported, batches.bytes);
            let body = format!("{{\"import_id\":{import_id},\"rows\":{rows}}}\n");
            ex.respond(StatusCode(201), b"application/json", body.as_bytes());
        }
        Err(failure) => {
            // Nothing of the upload may remain: end the COPY, roll back,
            // and only then give the connection back. Both are bounded: a
            // database that does not acknowledge in time gets its connection
            // closed instead, which rolls the transaction back too.
            let query_timeout = pool.settings().query_timeout;
            let aborted = match copy.take() {
                Some(c) => monoio::time::timeout(query_timeout, c.abort("upload rejected"))
                    .await
                    .is_ok(),
                None => true,
            };
            if aborted && held.simple("ROLLBACK").await.is_ok() {
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

/// The request body as validated CSV records, a batch at a time.
struct Batches {
    csv: CsvValidator,
    /// Whole records ready for COPY (the header row is not among them).
    out: BytesMut,
    /// Send once this much is ready.
    batch_bytes: usize,
    /// Body bytes read so far.
    bytes: u64,
    ended: bool,
}

impl Batches {
    fn new(batch_bytes: usize) -> Self {
        Batches {
            csv: CsvValidator::new(Limits::default()),
            // Grown as records arrive (to at most a batch and a record):
            // a client that sends a few bytes costs a few bytes.
            out: BytesMut::new(),
            batch_bytes,
            bytes: 0,
            ended: false,
        }
    }

    /// Reads until a batch of whole records is ready or the body ended.
    async fn fill(&mut self, ex: &mut Exchange<'_, '_>) -> Result<(), Failure> {
        while !self.ended && self.out.len() < self.batch_bytes {
            match ex.body_chunk().await {
                Ok(Some(data)) => {
                    self.bytes += data.len() as u64;
                    self.csv.push(&data, &mut self.out).map_err(Failure::Csv)?;
                }
                Ok(None) => {
                    self.csv.finish(&mut self.out).map_err(Failure::Csv)?;
                    self.ended = true;
                }
                Err(e) => return Err(Failure::Body(e)),
            }
        }
        Ok(())
    }

    /// The COPY column list, once the header row arrived (after `fill`, it
    /// has, unless the body was empty).
    fn columns(&self) -> Result<String, Failure> {
        match self.csv.header() {
            Some(_) => check_header(&self.csv),
            None => Err(Failure::Header(
                "the upload is empty: a header row naming the columns is required".into(),
            )),
        }
    }
}

/// The upload inside its transaction; returns the import id and row count.
async fn run(
    app: &App,
    ex: &mut Exchange<'_, '_>,
    deadline: Instant,
    held: &Held,
    columns: &str,
    batches: &mut Batches,
    copy: &mut Option<CopyIn>,
) -> Result<(i64, u64), Failure> {
    // A backstop for a session left idle inside this transaction (between
    // our statements there is only our own work, never a client wait).
    let idle_limit = (app.settings.db_query_timeout * 2).as_millis().max(1000);
    let rows = held
        .simple(&format!(
            "BEGIN; SET LOCAL idle_in_transaction_session_timeout = {idle_limit}; \
             INSERT INTO imports DEFAULT VALUES RETURNING id"
        ))
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

    let sql = format!("COPY contacts ({columns}) FROM STDIN (FORMAT csv)");
    let c = copy.insert(held.copy_in(&sql).await.map_err(Failure::Db)?);
    let query_timeout = app.settings.db_query_timeout;
    loop {
        if !batches.out.is_empty() {
            // Back-pressure: the next batch is read only once this one was
            // written to PostgreSQL. A database that cannot take it within
            // the query timeout is treated as stuck.
            monoio::time::timeout(query_timeout, c.send(&batches.out))
                .await
                .map_err(|_| Failure::Db(QueryError::Timeout))?
                .map_err(Failure::Db)?;
            batches.out.clear();
        }
        if batches.ended {
            break;
        }
        batches.fill(ex).await?;
    }
    // Finishing waits for the server to take everything already in the
    // socket buffers, which a slow database may take long over while it
    // makes progress: the upload's own deadline (around this whole run)
    // bounds it, not one query's.
    let rows = copy
        .take()
        .expect("COPY started")
        .finish()
        .await
        .map_err(Failure::Db)?;
    // The COMMIT's answer is waited for as long as the upload may last: a
    // client told its import failed must find nothing of it.
    let left = deadline.saturating_duration_since(Instant::now());
    held.simple_within(
        &format!(
            "UPDATE imports SET rows = {rows}, finished_at = now() WHERE id = {import_id}; COMMIT"
        ),
        left.max(query_timeout),
    )
    .await
    .map_err(Failure::Db)?;
    Ok((import_id, rows))
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
