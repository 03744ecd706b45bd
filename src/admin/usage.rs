//! Usage per key, per owner and for every key, over a time range.

use std::time::{Duration, SystemTime};

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;

use super::keys::{find, query};
use super::model::{
    key_id, timestamp, BucketView, CountsView, KeyUsageQuery, KeyUsageView, RangeView,
    UsageQueryParams, UsageReport,
};
use super::{json, AdminState, Problem, ProblemType};
use crate::key::KeyId;
use crate::usage::{Step, TimeRange, UsageCounts, UsageQuery, UsageRow};

/// The range when none is asked for: the last day.
const DEFAULT_RANGE: Duration = Duration::from_secs(24 * 3600);
/// The longest range one request may ask for.
const MAX_RANGE: Duration = Duration::from_secs(366 * 24 * 3600);
/// The most buckets a series may have (per key).
const MAX_BUCKETS: u64 = 10_000;
const DEFAULT_KEYS: u32 = 100;
const MAX_KEYS: u32 = 1000;

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemType::INVALID_QUERY, detail)
}

fn time(name: &str, text: Option<&str>) -> Result<Option<SystemTime>, Problem> {
    text.map(|text| {
        crate::rfc3339::parse(text).map_err(|_| {
            invalid(format!(
                "\"{name}\" must be an RFC 3339 date-time such as 2025-01-31T12:00:00Z."
            ))
        })
    })
    .transpose()
}

/// The range and step a request asks for, checked.
fn range_and_step(
    state: &AdminState,
    from: Option<&str>,
    to: Option<&str>,
    step_minutes: Option<u32>,
) -> Result<(TimeRange, Option<Step>), Problem> {
    let to = time("to", to)?.unwrap_or_else(|| state.manager.clock().now());
    let from = match time("from", from)? {
        Some(from) => from,
        None => to
            .checked_sub(DEFAULT_RANGE)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    };
    let length = to
        .duration_since(from)
        .ok()
        .filter(|length| !length.is_zero())
        .ok_or_else(|| invalid("\"from\" must be before \"to\"."))?;
    if length > MAX_RANGE {
        return Err(invalid("A range spans at most 366 days."));
    }
    let step = match step_minutes {
        None => None,
        Some(minutes @ 1..=1440) => {
            let buckets = length.as_secs().div_ceil(60 * u64::from(minutes));
            if buckets > MAX_BUCKETS {
                return Err(invalid(format!(
                    "That range holds {buckets} steps of {minutes} minutes; at most {MAX_BUCKETS} are answered: ask for a wider step."
                )));
            }
            Some(Step::minutes(minutes))
        }
        Some(_) => return Err(invalid("\"step_minutes\" must be between 1 and 1440.")),
    };
    Ok((TimeRange::new(from, to), step))
}

/// Groups rows (ordered by key, then time) into one entry per key.
fn per_key(rows: Vec<UsageRow>, step: Option<Step>) -> Vec<KeyUsageView> {
    let mut keys: Vec<(KeyUsageView, UsageCounts)> = Vec::new();
    for row in rows {
        let same_key = keys
            .last()
            .is_some_and(|(view, _)| view.key_id == row.key_id.as_str());
        if !same_key {
            keys.push((
                KeyUsageView {
                    key_id: row.key_id.to_string(),
                    owner: row.owner.clone(),
                    counts: CountsView::default(),
                    series: step.map(|_| Vec::new()),
                },
                UsageCounts::default(),
            ));
        }
        let Some((view, total)) = keys.last_mut() else {
            continue;
        };
        total.add(&row.counts);
        if view.owner.is_none() {
            view.owner = row.owner;
        }
        if let Some(series) = &mut view.series {
            series.push(BucketView {
                start: timestamp(row.period.start()),
                end: timestamp(row.period.end()),
                counts: CountsView::from(&row.counts),
            });
        }
    }
    keys.into_iter()
        .map(|(mut view, total)| {
            view.counts = CountsView::from(&total);
            view
        })
        .collect()
}

fn page_limit(limit: Option<u32>) -> Result<u32, Problem> {
    match limit.unwrap_or(DEFAULT_KEYS) {
        limit @ 1..=MAX_KEYS => Ok(limit),
        _ => Err(invalid(format!(
            "\"limit\" must be between 1 and {MAX_KEYS}."
        ))),
    }
}

/// Answers a query for a page of keys.
async fn report(state: &AdminState, query: UsageQuery, limit: u32) -> Result<Response, Problem> {
    let (range, step) = (query.range, query.step);
    let rows = state.usage.query(&query.limit(limit as usize)).await?;
    let keys = per_key(rows, step);
    let next_after = (keys.len() == limit as usize)
        .then(|| keys.last().map(|key| key.key_id.clone()))
        .flatten();
    Ok(json(
        StatusCode::OK,
        &UsageReport {
            range: RangeView::from(range),
            step_minutes: step.map(|step| step.as_minutes()),
            keys,
            next_after,
        },
    ))
}

fn after(text: Option<&str>) -> Result<Option<KeyId>, Problem> {
    text.map(|text| {
        text.parse()
            .map_err(|_| invalid("\"after\" must be a key id (a page's next_after)."))
    })
    .transpose()
}

/// One key's usage over a time range, as a total or a series.
#[utoipa::path(
    get,
    path = "/keys/{key_id}/usage",
    tag = "usage",
    operation_id = "key_usage",
    params(("key_id" = String, Path, description = "The key's id"), KeyUsageQuery),
    responses(
        (status = 200, description = "The key's usage (one entry, zeros when it made no request)", body = UsageReport),
        (status = 400, description = "Not a key id, or a bad range or step", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn key_usage(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, Problem> {
    let id = key_id(&id)?;
    let request: KeyUsageQuery = query(&uri)?;
    let (range, step) = range_and_step(
        &state,
        request.from.as_deref(),
        request.to.as_deref(),
        request.step_minutes,
    )?;
    let record = find(&state, &id).await?;
    let mut query = UsageQuery::key(id, range);
    query.step = step;
    let mut keys = per_key(state.usage.query(&query).await?, step);
    if keys.is_empty() {
        keys.push(KeyUsageView {
            key_id: id.to_string(),
            owner: Some(record.owner.to_string()),
            counts: CountsView::default(),
            series: step.map(|_| Vec::new()),
        });
    }
    Ok(json(
        StatusCode::OK,
        &UsageReport {
            range: RangeView::from(range),
            step_minutes: step.map(|step| step.as_minutes()),
            keys,
            next_after: None,
        },
    ))
}

/// The usage of each of an owner's keys over a time range, a page of
/// keys at a time.
#[utoipa::path(
    get,
    path = "/owners/{owner}/usage",
    tag = "usage",
    operation_id = "owner_usage",
    params(("owner" = String, Path, description = "The owner"), UsageQueryParams),
    responses(
        (status = 200, description = "Usage of the owner's keys that made requests in the range", body = UsageReport),
        (status = 400, description = "A bad range, step, limit or cursor", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn owner_usage(
    State(state): State<AdminState>,
    Path(owner): Path<String>,
    uri: Uri,
) -> Result<Response, Problem> {
    let request: UsageQueryParams = query(&uri)?;
    let (range, step) = range_and_step(
        &state,
        request.from.as_deref(),
        request.to.as_deref(),
        request.step_minutes,
    )?;
    let limit = page_limit(request.limit)?;
    let mut query = UsageQuery::owner(owner, range);
    query.step = step;
    query.after = after(request.after.as_deref())?;
    report(&state, query, limit).await
}

/// The usage of every key over a time range, a page of keys at a time.
///
/// A browser's navigation here (`Accept: text/html`) gets the usage page
/// instead, which needs no key: it asks for one.
#[utoipa::path(
    get,
    path = "/usage",
    tag = "usage",
    operation_id = "all_usage",
    params(UsageQueryParams),
    responses(
        (status = 200, description = "Usage of every key that made requests in the range; with `Accept: text/html`, the usage page",
            content(
                (UsageReport = "application/json"),
                (String = "text/html"),
            )
        ),
        (status = 400, description = "A bad range, step, limit or cursor", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn all_usage(
    State(state): State<AdminState>,
    uri: Uri,
) -> Result<Response, Problem> {
    let request: UsageQueryParams = query(&uri)?;
    let (range, step) = range_and_step(
        &state,
        request.from.as_deref(),
        request.to.as_deref(),
        request.step_minutes,
    )?;
    let limit = page_limit(request.limit)?;
    let mut query = UsageQuery::all(range);
    query.step = step;
    query.after = after(request.after.as_deref())?;
    report(&state, query, limit).await
}
