//! What every admin call uses: its answer (status, JSON body, the version a
//! change published) and the HTTP response it becomes, the strict body
//! parser, the key store call off the async workers, and the audit line.

use std::sync::Arc;

use http::{Response, StatusCode};
use scopegate_keystore::{Error as KsError, ErrorKind, KeyStore};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::request::respond::error_json;

/// An admin answer: status, JSON body (or none), the snapshot version a
/// change published, and which store failure it reports (for metrics).
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) body: Option<Value>,
    pub(super) version: Option<u64>,
    pub(super) store: Option<&'static str>,
}

impl Answer {
    pub(super) fn json(status: StatusCode, body: Value) -> Answer {
        Answer {
            status,
            body: Some(body),
            version: None,
            store: None,
        }
    }
    pub(super) fn error(status: StatusCode, code: &str, message: impl AsRef<str>) -> Answer {
        Answer::json(status, error_json(code, message.as_ref()))
    }
    pub(super) fn versioned(mut self, version: u64) -> Answer {
        self.version = Some(version);
        if let Some(Value::Object(m)) = &mut self.body {
            m.insert("version".into(), json!(version));
        }
        self
    }
}

impl From<KsError> for Answer {
    fn from(e: KsError) -> Answer {
        let status = match e.kind {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Rule => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Store => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut a = Answer::error(status, e.code, &e.message);
        a.store = e.store;
        a
    }
}

pub(super) fn response(a: Answer) -> Response<Vec<u8>> {
    let body = a
        .body
        .map(|b| {
            let mut v = serde_json::to_vec(&b).expect("JSON values serialise");
            v.push(b'\n');
            v
        })
        .unwrap_or_default();
    let mut r = Response::builder()
        .status(a.status)
        .header("Cache-Control", "no-store");
    // A 204 has no body and must not say it has one (RFC 9110 §8.6).
    if a.status != StatusCode::NO_CONTENT {
        r = r.header("Content-Length", body.len().to_string());
    }
    if !body.is_empty() {
        r = r.header("Content-Type", "application/json");
    }
    if let Some(v) = a.version {
        r = r.header("X-Scopegate-Version", v.to_string());
    }
    if a.status == StatusCode::SERVICE_UNAVAILABLE {
        // The store is down or busy: nothing changed, and trying again works
        // once it is back.
        r = r.header("Retry-After", "1");
    }
    r.body(body).expect("valid response")
}

pub(super) fn text(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len().to_string())
        .header("Cache-Control", "no-store")
        .body(body)
        .expect("valid response")
}

/// Parses a JSON body strictly: an empty or invalid one is 400 `invalid_json`.
pub(super) fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Answer> {
    if body.is_empty() {
        return Err(Answer::error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "a JSON body is required",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        Answer::error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("invalid request body: {e}"),
        )
    })
}

/// Runs a blocking key store call off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    ks: &Arc<KeyStore>,
    f: impl FnOnce(&KeyStore) -> T + Send + 'static,
) -> T {
    let ks = Arc::clone(ks);
    tokio::task::spawn_blocking(move || f(&ks))
        .await
        .expect("key store call panicked")
}

/// An audit line: who made which change to what, and the version it published.
pub(super) fn audit(actor: &str, kind: &str, subject: &str, version: u64) {
    audit_with(actor, kind, subject, version, "");
}

/// An audit line with what the change set beyond its subject (`detail`:
/// more `name=value` pairs, or empty).
pub(super) fn audit_with(actor: &str, kind: &str, subject: &str, version: u64, detail: &str) {
    let sep = if detail.is_empty() { "" } else { " " };
    log::info!(target: "scopegate::audit", "actor={actor} change={kind} subject={subject} version={version}{sep}{detail}");
}
