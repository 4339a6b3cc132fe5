//! Admin API (JSON): per-action counters, runtime faults, timing knobs.
//!
//! | Method + path | Body / answer |
//! |---|---|
//! | `GET /counters` | `{"<Action>": {"calls": n, "errors": n, "throttled": n}, …}` |
//! | `DELETE /counters` or `POST /counters/reset` | zeroes the counters |
//! | `GET /faults` | `{"<Action>" or "*": FaultSpec, …}` |
//! | `PUT /faults/{action}` (or `POST`) | body: [`FaultSpec`]; `*` = every action without its own |
//! | `DELETE /faults/{action}`, `DELETE /faults` | removes one / all |
//! | `GET /timing`, `PUT /timing` | `{"attach_delay_ms", "detach_delay_ms", "imds_lag_ms", "describe_lag_ms"?}` |
//! | `POST /reset` | clears faults and counters |
//! | `GET /healthz` | `ok` |

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::faults::FaultSpec;
use crate::server::{Sim, lock};

/// Timing knobs (milliseconds), as `GET`/`PUT /timing` exchange them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Time in `attaching`.
    pub attach_delay_ms: u64,
    /// Time in `detaching`.
    pub detach_delay_ms: u64,
    /// IMDS / fabric lag.
    pub imds_lag_ms: u64,
    /// Describe-after-create lag (optional in `PUT`; unchanged when absent).
    #[serde(default)]
    pub describe_lag_ms: Option<u64>,
}

/// The admin router.
pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/counters", get(counters).delete(reset_counters))
        .route("/counters/reset", post(reset_counters))
        .route("/faults", get(faults).delete(clear_faults))
        .route(
            "/faults/{action}",
            put(set_fault).post(set_fault).delete(clear_fault),
        )
        .route("/timing", get(timing).put(set_timing))
        .route("/reset", post(reset))
        .with_state(sim)
}

async fn counters(State(sim): State<Arc<Sim>>) -> Response {
    Json(sim.counters()).into_response()
}

async fn reset_counters(State(sim): State<Arc<Sim>>) -> StatusCode {
    lock(&sim.counters).clear();
    StatusCode::NO_CONTENT
}

async fn faults(State(sim): State<Arc<Sim>>) -> Response {
    Json(lock(&sim.faults).specs().clone()).into_response()
}

async fn clear_faults(State(sim): State<Arc<Sim>>) -> StatusCode {
    lock(&sim.faults).clear_all();
    StatusCode::NO_CONTENT
}

async fn set_fault(
    State(sim): State<Arc<Sim>>,
    Path(action): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let spec: FaultSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("bad FaultSpec JSON: {e}\n"),
            )
                .into_response();
        }
    };
    match lock(&sim.faults).set(&action, spec) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn clear_fault(State(sim): State<Arc<Sim>>, Path(action): Path<String>) -> StatusCode {
    if lock(&sim.faults).clear(&action) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn timing(State(sim): State<Arc<Sim>>) -> Response {
    let m = lock(&sim.model);
    let c = m.config();
    Json(Timing {
        attach_delay_ms: c.attach_delay.as_millis() as u64,
        detach_delay_ms: c.detach_delay.as_millis() as u64,
        imds_lag_ms: c.imds_lag.as_millis() as u64,
        describe_lag_ms: Some(c.describe_lag.as_millis() as u64),
    })
    .into_response()
}

async fn set_timing(State(sim): State<Arc<Sim>>, body: axum::body::Bytes) -> Response {
    let t: Timing = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("bad Timing JSON: {e}\n")).into_response();
        }
    };
    sim.set_timing(
        Duration::from_millis(t.attach_delay_ms),
        Duration::from_millis(t.detach_delay_ms),
        Duration::from_millis(t.imds_lag_ms),
    );
    if let Some(d) = t.describe_lag_ms {
        sim.set_describe_lag(Duration::from_millis(d));
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn reset(State(sim): State<Arc<Sim>>) -> StatusCode {
    lock(&sim.faults).clear_all();
    lock(&sim.counters).clear();
    StatusCode::NO_CONTENT
}
