//! The routes. Handlers see requests through an [`Exchange`] and never
//! touch a socket.

use crate::http::{Exchange, Method, Service, StatusCode};

const TEXT: &[u8] = b"text/plain; charset=utf-8";

/// The application, one per core.
#[derive(Default)]
pub struct App {}

impl App {
    pub fn new() -> Self {
        App {}
    }
}

impl Service for App {
    async fn call(&self, ex: &mut Exchange<'_, '_>) {
        {
            let method = ex.method();
            match ex.path() {
                "/plaintext" => match method {
                    Method::Get | Method::Head => {
                        ex.respond(StatusCode::OK, TEXT, b"Hello, World!")
                    }
                    _ => method_not_allowed(ex, b"GET, HEAD"),
                },
                "/healthz" => match method {
                    Method::Get | Method::Head => ex.respond(StatusCode::OK, TEXT, b"ok\n"),
                    _ => method_not_allowed(ex, b"GET, HEAD"),
                },
                "/echo" => match method {
                    Method::Post | Method::Put => echo(ex).await,
                    _ => method_not_allowed(ex, b"POST, PUT"),
                },
                _ => ex.respond_error(StatusCode::NOT_FOUND, "no such route"),
            }
        }
    }
}

fn method_not_allowed(ex: &mut Exchange<'_, '_>, allow: &[u8]) {
    let body = b"405 Method Not Allowed\n";
    ex.respond_with(
        StatusCode::METHOD_NOT_ALLOWED,
        TEXT,
        &[("Allow", allow)],
        body,
    );
}

/// Answers with the request body, which is bounded by the body limit
/// (`--max-body-bytes`). A diagnostic route: it shows what the server
/// decoded (chunked framing, 100-continue) byte for byte.
async fn echo(ex: &mut Exchange<'_, '_>) {
    let mut body = Vec::new();
    loop {
        match ex.body_chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => return ex.respond_body_error(e),
        }
    }
    let ctype = ex
        .head()
        .header("content-type")
        .map(<[u8]>::to_vec)
        .unwrap_or_else(|| b"application/octet-stream".to_vec());
    ex.respond(StatusCode::OK, &ctype, &body);
}
