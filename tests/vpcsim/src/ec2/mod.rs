//! The EC2 Query API front end: form parsing, fault injection, dispatch to the model, XML.

mod actions;
pub mod params;
pub mod xml;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use crate::model::ApiError;
use crate::server::{Sim, lock};
use params::Params;

/// The API version every request must carry.
pub const API_VERSION: &str = "2016-11-15";

/// Router serving the EC2 Query API at `/` (POST form bodies, or GET query strings).
pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/", any(handle))
        .fallback(any(handle))
        .with_state(sim)
}

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(1);

/// A UUID-shaped request ID (unique within the process; no randomness needed).
fn request_id() -> String {
    let n = REQUEST_SEQ.fetch_add(1, Ordering::Relaxed);
    let h = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (h >> 32) as u32,
        (h >> 16) as u16,
        (h >> 4) as u16 & 0xfff,
        (n >> 48) as u16 & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

fn xml_response(status: u16, body: String) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml;charset=UTF-8"),
    );
    r
}

fn error_response(e: &ApiError, request_id: &str) -> Response {
    xml_response(e.http_status(), xml::error(&e.code, &e.message, request_id))
}

async fn handle(
    State(sim): State<Arc<Sim>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rid = request_id();
    let mut p = Params::default();
    if let Some(q) = uri.query()
        && let Err(e) = p.extend_urlencoded(q.as_bytes())
    {
        return error_response(&e, &rid);
    }
    if let Err(e) = p.extend_urlencoded(&body) {
        return error_response(&e, &rid);
    }
    let Some(action) = p.get("Action").map(str::to_string) else {
        return error_response(
            &ApiError::new(
                "MissingAction",
                "The request must contain the parameter Action",
            ),
            &rid,
        );
    };
    let counted = |errored: bool, throttled: bool| {
        let mut c = lock(&sim.counters);
        let e = c.entry(action.clone()).or_default();
        e.calls += 1;
        if errored {
            e.errors += 1;
        }
        if throttled {
            e.throttled += 1;
        }
    };
    if sim.require_auth
        && !headers.contains_key(header::AUTHORIZATION)
        && p.get("X-Amz-Signature").is_none()
    {
        counted(true, false);
        return error_response(
            &ApiError::new(
                "AuthFailure",
                "AWS was not able to validate the provided access credentials (the request is \
                 not signed)",
            ),
            &rid,
        );
    }
    match p.get("Version") {
        None => {
            counted(true, false);
            return error_response(&ApiError::missing("Version"), &rid);
        }
        Some(v) if v != API_VERSION => {
            counted(true, false);
            return error_response(
                &ApiError::new(
                    "InvalidParameterValue",
                    format!("Version '{v}' is not supported; use {API_VERSION}"),
                ),
                &rid,
            );
        }
        Some(_) => {}
    }
    let decision = lock(&sim.faults).decide(&action, Instant::now());
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
    if let Some(e) = decision.error {
        counted(true, decision.throttled);
        tracing::debug!(%action, code = %e.code, "injected fault");
        return error_response(&e, &rid);
    }
    let result = actions::dispatch(&sim, &action, &p);
    counted(result.is_err(), false);
    match result {
        Ok(body) => xml_response(200, xml::success(&action, &rid, &body)),
        Err(e) => {
            tracing::debug!(%action, code = %e.code, message = %e.message, "EC2 error");
            error_response(&e, &rid)
        }
    }
}
