//! The admin API of several instances: writing off an instance whose journal is lost, and
//! the orders two users redeemed on two instances at once.

use hyper::StatusCode;
use serde::Serialize;

use crate::db::cluster::{self, WriteOff};
use crate::http::State;
use crate::http::call::Call;
use crate::http::error::ApiError;
use crate::http::handlers::admin::{database_error, limit_param};
use crate::http::response::{self, HttpResponse, rfc3339};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WrittenOff<'a> {
    instance_id: &'a str,
    units_returned: i64,
    epoch: i64,
}

/// `POST /admin/instances/{id}/write-off`.
pub async fn write_off(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    let id = call.params[0].as_str();
    match cluster::write_off(&state.pool, id).await.map_err(database_error)? {
        WriteOff::Done { units, epoch } => {
            tracing::warn!(instance = id, units, "instance written off: its leased units are available again");
            let body = WrittenOff { instance_id: id, units_returned: units, epoch };
            Ok(response::json(StatusCode::OK, &body))
        }
        WriteOff::NotFound => Err(ApiError::Missing { what: "instance", key: "id", value: id.to_owned() }),
        WriteOff::Live => Err(ApiError::Conflict {
            message: format!(
                "instance {id} is running, or was moments ago; stop it (or let it stop) and retry once it has \
                 been silent for its identity timeout"
            ),
        }),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConflictView {
    redemption_id: uuid::Uuid,
    coupon_id: i64,
    order_id: String,
    kept_user: String,
    lost_user: String,
    instance_id: String,
    detected_at: String,
}

#[derive(Serialize)]
struct Conflicts {
    conflicts: Vec<ConflictView>,
}

/// `GET /admin/orders/conflicts?limit=N`.
pub async fn order_conflicts(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    let limit = limit_param(call.query.as_deref())?;
    let rows = cluster::order_conflicts(&state.pool, limit).await.map_err(database_error)?;
    let conflicts = rows
        .into_iter()
        .map(|c| ConflictView {
            redemption_id: c.redemption_id,
            coupon_id: c.coupon_id,
            order_id: c.order_id,
            kept_user: c.kept_user,
            lost_user: c.lost_user,
            instance_id: c.instance_id,
            detected_at: rfc3339(c.detected_at),
        })
        .collect();
    Ok(response::json(StatusCode::OK, &Conflicts { conflicts }))
}
