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
//! | `GET /state` | the live model: subnets (with `available`), instances and every ENI |
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
use crate::model::mac_string;
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
        .route("/state", get(state))
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

/// A JSON dump of the live (not lagged) model, for humans and scripts.
async fn state(State(sim): State<Arc<Sim>>) -> Response {
    let m = lock(&sim.model);
    let subnets: Vec<serde_json::Value> = m
        .subnets
        .values()
        .map(|s| {
            serde_json::json!({
                "subnet_id": s.id,
                "cidr": s.cidr.to_string(),
                "availability_zone": s.az,
                "available_ip_address_count": s.available(),
                "tags": s.tags,
            })
        })
        .collect();
    let enis: Vec<serde_json::Value> = m
        .enis
        .values()
        .map(|e| {
            serde_json::json!({
                "eni_id": e.id,
                "subnet_id": e.subnet_id,
                "status": e.status(),
                "mac": mac_string(&e.mac),
                "description": e.description,
                "primary_ip": e.primary_ip.to_string(),
                "secondary_ips": e.secondaries.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "prefixes": e.prefixes.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "security_groups": e.groups,
                "tags": e.tags,
                "attachment": e.attachment.as_ref().map(|a| serde_json::json!({
                    "attachment_id": a.id,
                    "instance_id": a.instance_id,
                    "device_index": a.device_index,
                    "network_card": a.card,
                    "status": a.state.as_str(),
                    "delete_on_termination": a.delete_on_termination,
                })),
            })
        })
        .collect();
    let instances: Vec<serde_json::Value> = m
        .instances
        .values()
        .map(|i| {
            serde_json::json!({
                "instance_id": i.id,
                "instance_type": i.limits.name,
                "subnet_id": i.subnet_id,
                "availability_zone": i.az,
                "primary_eni_id": i.primary_eni,
            })
        })
        .collect();
    Json(serde_json::json!({
        "vpc_id": m.vpc_id,
        "vpc_cidr": m.config().vpc_cidr.to_string(),
        "generation": m.generation(),
        "subnets": subnets,
        "instances": instances,
        "network_interfaces": enis,
    }))
    .into_response()
}
