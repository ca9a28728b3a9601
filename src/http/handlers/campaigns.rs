//! The admin API of campaigns and their bulk codes: campaigns with their live usage, batches
//! generated or imported, a batch's progress, the CSV export of a campaign's codes, and
//! assign-next.

use std::fmt::Write;
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::db::batches::{self, Assignment, ClaimError, CodeUse, Outcome};
use crate::db::campaigns::{self, WriteError};
use crate::db::catalog;
use crate::domain::campaign::Campaign;
use crate::domain::money::Cents;
use crate::http::State;
use crate::http::call::Call;
use crate::http::campaign_input::{BatchRequest, CampaignPatch};
use crate::http::error::ApiError;
use crate::http::handlers::admin::{CACHE_SYNC_TIMEOUT, database_error, write_error};
use crate::http::request::{id, parse_object};
use crate::http::response::{self, HttpResponse, optional_money, rfc3339};

/// How long a batch request waits for its batch before answering `202`: under the admin
/// timeout, with room to spare.
const BATCH_WAIT: Duration = Duration::from_secs(3);
/// What an admin answer keeps of its deadline for writing the answer.
const ANSWER_MARGIN: Duration = Duration::from_millis(500);
/// Bytes of CSV sent at a time.
const CSV_CHUNK: usize = 64 * 1024;

/// A campaign as the admin API shows it, with its live usage on this instance.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CampaignView<'a> {
    id: i64,
    name: &'a str,
    status: &'static str,
    usage_limit: Option<u32>,
    per_user_limit: Option<u32>,
    #[serde(serialize_with = "optional_money")]
    budget: Option<Cents>,
    valid_from: Option<String>,
    valid_until: Option<String>,
    version: i64,
    /// Live redemptions and holds of every code of the campaign.
    used: u32,
    /// The discounts they took.
    #[serde(serialize_with = "response::money")]
    spent: Cents,
    remaining_uses: Option<u32>,
    #[serde(serialize_with = "optional_money")]
    remaining_budget: Option<Cents>,
    /// Whether this instance's catalog already serves this version.
    cached: bool,
}

fn view<'a>(state: &State, campaign: &'a Campaign) -> CampaignView<'a> {
    let standing = state.engine.campaign_standing(campaign);
    let cached = state.engine.catalog().load().campaign(campaign.id).is_some_and(|c| c.version >= campaign.version);
    CampaignView {
        id: campaign.id,
        name: &campaign.name,
        status: campaign.status.as_str(),
        usage_limit: campaign.usage_limit,
        per_user_limit: campaign.per_user_limit,
        budget: campaign.budget,
        valid_from: campaign.valid_from.map(rfc3339),
        valid_until: campaign.valid_until.map(rfc3339),
        version: campaign.version,
        used: standing.used,
        spent: standing.spent,
        remaining_uses: standing.remaining_uses,
        remaining_budget: standing.remaining_budget,
        cached,
    }
}

/// `POST /admin/campaigns`.
pub async fn create_campaign(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    let campaign = CampaignPatch::parse(&call.body)?.into_new_campaign()?;
    let created = campaigns::insert(&state.pool, &campaign).await.map_err(campaign_error)?;
    wait_until_cached(state, &created).await;
    Ok(response::json(StatusCode::CREATED, &view(state, &created)))
}

/// `GET /admin/campaigns/{name}`: the definition from PostgreSQL, usage from the ledger.
pub(crate) async fn read_campaign(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    let campaign = campaign_named(state, &call.params[0]).await?;
    Ok(response::json(StatusCode::OK, &view(state, &campaign)))
}

/// `PATCH /admin/campaigns/{name}`: a limit or budget below what is used already is refused.
pub(crate) async fn patch_campaign(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    let patch = CampaignPatch::parse(&call.body)?;
    let engine = &state.engine;
    let updated = campaigns::update(&state.pool, &call.params[0], |current| {
        let next = patch.apply_to(current)?;
        engine
            .check_campaign_change(&next)
            .map_err(|below| ApiError::BelowUsage { field: below.field, used: below.used })?;
        Ok(next)
    })
    .await
    .map_err(campaign_error)??;
    wait_until_cached(state, &updated).await;
    Ok(response::json(StatusCode::OK, &view(state, &updated)))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchCreated {
    batch_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<usize>,
    status: &'static str,
    /// Whether this instance already serves the codes.
    #[serde(skip_serializing_if = "Option::is_none")]
    cached: Option<bool>,
}

/// `POST /admin/campaigns/{name}/batches`: generates or imports a batch. A batch finished
/// within a few seconds answers `201`; a longer one `202`, to be followed at
/// `GET /admin/batches/{id}`.
pub(crate) async fn create_batch(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    // Parsed off the request workers (an import's body may be 64 MiB), and before the admin
    // deadline starts: this route keeps the deadline itself, from here.
    let body = call.body.clone();
    let request =
        tokio::task::spawn_blocking(move || BatchRequest::parse(&body)).await.map_err(|_| ApiError::Internal)??;
    let deadline = tokio::time::Instant::now() + state.http.admin_timeout;
    let campaign = tokio::time::timeout_at(deadline, campaign_named(state, &call.params[0]))
        .await
        .map_err(|_| ApiError::Timeout)??;
    let count = match &request.source {
        batches::Source::Generated(spec) => spec.count as usize,
        batches::Source::Imported(codes) => codes.len(),
    };
    let started = tokio::time::timeout_at(
        deadline,
        state.batch_jobs.start(&state.pool, campaign.id, &request.rule, request.uses_per_code, request.source),
    )
    .await
    .map_err(|_| ApiError::Timeout)?;
    let mut started = started.map_err(|err| match err {
        ClaimError::ShapeTaken(_) => ApiError::InvalidField { field: "prefix", problem: err.to_string() },
        ClaimError::Rule(err) => write_error(err),
        ClaimError::Database(err) => database_error(err),
    })?;
    let id = started.id;
    // Answered before the deadline: the batch goes on, and the client has its id.
    let answer_by = deadline - ANSWER_MARGIN;
    let left = || answer_by.saturating_duration_since(tokio::time::Instant::now());
    let outcome = match tokio::time::timeout(BATCH_WAIT.min(left()), &mut started.done).await {
        Err(_) => {
            let body = BatchCreated { batch_id: id, count: None, status: "running", cached: None };
            return Ok(response::json(StatusCode::ACCEPTED, &body));
        }
        Ok(joined) => joined.map_err(|_| ApiError::Internal)?.map_err(database_error)?,
    };
    match outcome {
        Outcome::Done => {
            let catalog = state.engine.catalog();
            let cached = catalog.wait_until(CACHE_SYNC_TIMEOUT.min(left()), |c| c.codes().batch(id).is_some()).await;
            let body = BatchCreated { batch_id: id, count: Some(count), status: "done", cached: Some(cached) };
            Ok(response::json(StatusCode::CREATED, &body))
        }
        Outcome::Duplicates(codes) => Err(ApiError::DuplicateCodes { codes }),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchView {
    batch_id: i64,
    campaign: String,
    kind: String,
    status: String,
    count: i32,
    produced: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `GET /admin/batches/{id}`.
pub(crate) async fn read_batch(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    let missing = || ApiError::Missing { what: "batch", key: "id", value: call.params[0].clone() };
    let id: i64 = call.params[0].parse().map_err(|_| missing())?;
    let status = batches::status(&state.pool, id).await.map_err(database_error)?.ok_or_else(missing)?;
    let produced = match state.batch_jobs.produced(id) {
        Some(produced) if status.status == "running" => produced,
        _ => u64::try_from(status.produced).unwrap_or(0),
    };
    let body = BatchView {
        batch_id: status.id,
        campaign: status.campaign,
        kind: status.kind,
        status: status.status,
        count: status.requested,
        produced,
        error: status.error,
    };
    Ok(response::json(StatusCode::OK, &body))
}

/// Which codes an export lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    Unused,
    Used,
    All,
}

/// `GET /admin/campaigns/{name}/codes?state=unused|used|all`: `code,state,uses`, one line a
/// code, streamed from memory in chunks. A code is `used` while it has a live use.
pub(crate) async fn export_codes(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    let listed = listed(call.query.as_deref())?;
    let campaign = campaign_named(state, &call.params[0]).await?;
    let engine = state.engine.clone();
    let batches = engine.campaign_batches(campaign.id);
    let (response, chunks) = response::streamed(HeaderValue::from_static("text/csv; charset=utf-8"));
    tokio::spawn(async move {
        let mut text = String::with_capacity(CSV_CHUNK + 256);
        text.push_str("code,state,uses\n");
        let mut code = String::new();
        for batch in batches {
            for index in 0..batch.len() as u32 {
                let uses = engine.code_uses(batch.id, index);
                let used = uses > 0;
                if (listed == Listed::Used && !used) || (listed == Listed::Unused && used) {
                    continue;
                }
                code.clear();
                batch.write_code(index as usize, &mut code);
                csv_field(&code, &mut text);
                let _ = writeln!(text, ",{},{uses}", if used { "used" } else { "unused" });
                if text.len() >= CSV_CHUNK && chunks.send(Bytes::from(std::mem::take(&mut text))).await.is_err() {
                    // The client went away.
                    return;
                }
            }
        }
        let _ = chunks.send(Bytes::from(text)).await;
    });
    Ok(response)
}

fn listed(query: Option<&str>) -> Result<Listed, ApiError> {
    let mut listed = Listed::All;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key == "state" {
            listed = match &*value {
                "unused" => Listed::Unused,
                "used" => Listed::Used,
                "all" => Listed::All,
                _ => {
                    return Err(ApiError::InvalidField {
                        field: "state",
                        problem: "must be unused, used or all".into(),
                    });
                }
            };
        }
    }
    Ok(listed)
}

/// A CSV field: quoted when it holds a comma or a quote (codes have no spaces or newlines),
/// and a value a spreadsheet would run as a formula (one starting with `=`, `+`, `-`, `@`, a tab
/// or a carriage return) written with a `'` before it, quoted, as OWASP advises for CSV.
fn csv_field(value: &str, out: &mut String) {
    let formula = value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if formula || value.contains([',', '"']) {
        out.push('"');
        if formula {
            out.push('\'');
        }
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

#[derive(Deserialize)]
struct AssignBody<'a> {
    #[serde(borrow, rename = "userId")]
    user_id: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    key: Option<&'a serde_json::value::RawValue>,
}

#[derive(Serialize)]
struct Assigned {
    code: String,
}

/// `POST /admin/campaigns/{name}/codes/assign` `{"userId", "key"}`: an unused, unassigned
/// code, now the user's; the same key again gets the same code.
pub(crate) async fn assign_code(state: &State, call: Call) -> Result<HttpResponse, ApiError> {
    let body: AssignBody<'_> = parse_object(&call.body)?;
    let user_id = id(body.user_id, "userId")?.ok_or(ApiError::MissingField { field: "userId" })?;
    let key = id(body.key, "key")?.ok_or(ApiError::MissingField { field: "key" })?;
    let campaign = campaign_named(state, &call.params[0]).await?;
    let engine = &state.engine;
    let usable = |batch, index| match engine.code_is_free(batch, index) {
        Some(true) => CodeUse::Free,
        Some(false) => CodeUse::Taken,
        None => CodeUse::Unknown,
    };
    let assignment =
        batches::assign_next(&state.pool, campaign.id, &user_id, &key, state.assigned_codes_per_user, usable)
            .await
            .map_err(database_error)?;
    match assignment {
        Assignment::New { code, batch, position } => {
            engine.assign_code(batch, position, &user_id);
            Ok(response::json(StatusCode::CREATED, &Assigned { code }))
        }
        Assignment::Again { code } => Ok(response::json(StatusCode::OK, &Assigned { code })),
        Assignment::KeyTaken => {
            Err(ApiError::Conflict { message: "this key already assigned a code to another user".into() })
        }
        Assignment::Exhausted => Err(ApiError::PoolExhausted),
        Assignment::UserLimit => Err(ApiError::AssignmentLimitReached),
        Assignment::NotLoaded => Err(ApiError::Busy),
    }
}

/// The campaign named by a path segment, from PostgreSQL.
async fn campaign_named(state: &State, name: &str) -> Result<Campaign, ApiError> {
    catalog::campaign_by_name(&state.pool, name).await.map_err(database_error)?.ok_or_else(|| ApiError::Missing {
        what: "campaign",
        key: "name",
        value: name.to_owned(),
    })
}

/// Waits (bounded) until the NOTIFY of a campaign write has been applied here.
async fn wait_until_cached(state: &State, campaign: &Campaign) {
    if !state.engine.catalog().wait_for_campaign(campaign.id, campaign.version, CACHE_SYNC_TIMEOUT).await {
        tracing::warn!(id = campaign.id, version = campaign.version, "admin write not yet in the cache");
    }
}

fn campaign_error(err: WriteError) -> ApiError {
    match err {
        WriteError::DuplicateName(_) => ApiError::Conflict { message: err.to_string() },
        WriteError::NotFound(name) => ApiError::Missing { what: "campaign", key: "name", value: name },
        WriteError::Refused => ApiError::Refused,
        WriteError::Database(err) => database_error(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed_and_formulas_never_run() {
        for (code, expected) in [
            ("BF26-ABC", "BF26-ABC"),
            ("A,B", "\"A,B\""),
            ("Q\"T", "\"Q\"\"T\""),
            ("=HYPERLINK(1)", "\"'=HYPERLINK(1)\""),
            ("+1", "\"'+1\""),
            ("-2,3", "\"'-2,3\""),
            ("@SUM", "\"'@SUM\""),
            ("A=B", "A=B"),
        ] {
            let mut out = String::new();
            csv_field(code, &mut out);
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn export_states() {
        assert_eq!(listed(None).unwrap(), Listed::All);
        assert_eq!(listed(Some("state=unused")).unwrap(), Listed::Unused);
        assert_eq!(listed(Some("state=used")).unwrap(), Listed::Used);
        assert!(listed(Some("state=spent")).is_err());
    }
}
