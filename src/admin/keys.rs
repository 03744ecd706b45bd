//! The key operations: issue, list, get, rotate, revoke, disable, enable,
//! change scopes, change limits.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::model::{
    key_id, IssueKey, IssuedKeyView, KeyPage, KeyView, ListKeysQuery, PolicySpec, RotateKey,
    RotatedKeyView, SetLimits, SetScopes, MAX_SECONDS,
};
use super::{json, AdminState, Problem, ProblemType};
use crate::auth::Principal;
use crate::key::KeyId;
use crate::limit::Limits;
use crate::manager::IssueOptions;
use crate::record::KeyRecord;
use crate::scope::{Scope, ScopeSet};

/// The longest owner name accepted.
const MAX_OWNER_LEN: usize = 256;
/// Keys per page unless asked otherwise, and at most.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// Reads a JSON body into `T`, or says what is wrong with it.
pub(crate) fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Problem::new(
            ProblemType::INVALID_BODY,
            "The body is empty; send a JSON object.",
        ));
    }
    serde_json::from_slice(bytes).map_err(|error| {
        Problem::new(
            ProblemType::INVALID_BODY,
            format!("The body is not a valid request: {error}."),
        )
    })
}

/// Reads the query string into `T`, or says what is wrong with it.
pub(crate) fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, Problem> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(query)| query)
        .map_err(|rejection| Problem::new(ProblemType::INVALID_QUERY, rejection.body_text()))
}

/// Parses `scopes`, and checks that `caller` may grant each of them.
fn grantable_scopes(
    state: &AdminState,
    caller: &Principal,
    scopes: &[String],
) -> Result<ScopeSet, Problem> {
    let mut parsed = Vec::with_capacity(scopes.len());
    for text in scopes {
        let scope = Scope::new(text).map_err(|error| {
            Problem::new(
                ProblemType::INVALID_SCOPE,
                format!("The scope {text:?} is invalid: {error}."),
            )
        })?;
        if !state.grant_any_scope && !caller.scopes().grants(&scope) {
            return Err(Problem::new(
                ProblemType::SCOPE_NOT_HELD,
                format!("You cannot grant the scope {scope}, which your key does not hold."),
            ));
        }
        parsed.push(scope);
    }
    Ok(parsed.into_iter().collect())
}

fn limits(specs: &[PolicySpec]) -> Result<Limits, Problem> {
    PolicySpec::limits(specs).map_err(|error| {
        Problem::new(
            ProblemType::INVALID_LIMITS,
            format!("The limits cannot apply: {error}."),
        )
    })
}

fn seconds(name: &str, value: u64, min: u64) -> Result<Duration, Problem> {
    if (min..=MAX_SECONDS).contains(&value) {
        Ok(Duration::from_secs(value))
    } else {
        Err(Problem::new(
            ProblemType::INVALID_BODY,
            format!("\"{name}\" must be between {min} and {MAX_SECONDS} (100 years)."),
        ))
    }
}

/// Issue a key. The answer holds the plaintext key, this once.
#[utoipa::path(
    post,
    path = "/keys",
    tag = "keys",
    operation_id = "issue_key",
    request_body = IssueKey,
    responses(
        (status = 201, description = "The key, with its plaintext (shown once)", body = IssuedKeyView),
        (status = 400, description = "Malformed body, scope or duration", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A scope the caller does not hold", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Limits that cannot apply", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn issue_key(
    State(state): State<AdminState>,
    caller: Principal,
    bytes: Bytes,
) -> Result<Response, Problem> {
    let request: IssueKey = body(&bytes)?;
    if request.owner.is_empty() || request.owner.len() > MAX_OWNER_LEN {
        return Err(Problem::new(
            ProblemType::INVALID_BODY,
            format!("\"owner\" must be 1 to {MAX_OWNER_LEN} bytes long."),
        ));
    }
    let scopes = grantable_scopes(&state, &caller, &request.scopes)?;
    let limits = match &request.limits {
        Some(specs) => limits(specs)?,
        None => state.default_limits.clone(),
    };
    let mut options = IssueOptions::new(request.owner)
        .scopes(scopes)
        .limits(limits)
        .name(request.name.unwrap_or_default());
    if let Some(secs) = request.expires_in_seconds {
        options = options.expires_in(seconds("expires_in_seconds", secs, 1)?);
    }
    for (key, value) in request.metadata.unwrap_or_default() {
        options = options.metadata(key, value);
    }
    // Who issued the key: an audit trail on the record itself.
    options = options.metadata("issued_by", caller.key_id().to_string());
    let issued = state.manager.issue(options).await?;
    let view = IssuedKeyView {
        key: issued.key.expose_secret().to_owned(),
        record: KeyView::from(&issued.record),
    };
    Ok(json(StatusCode::CREATED, &view))
}

/// List an owner's keys, oldest first, a page at a time.
#[utoipa::path(
    get,
    path = "/keys",
    tag = "keys",
    operation_id = "list_keys",
    params(ListKeysQuery),
    responses(
        (status = 200, description = "A page of keys", body = KeyPage),
        (status = 400, description = "A missing owner, a bad limit or cursor", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_keys(
    State(state): State<AdminState>,
    uri: Uri,
) -> Result<Response, Problem> {
    let request: ListKeysQuery = query(&uri)?;
    let limit = request.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Problem::new(
            ProblemType::INVALID_QUERY,
            format!("\"limit\" must be between 1 and {MAX_PAGE}."),
        ));
    }
    let after = request.cursor.as_deref().map(Cursor::parse).transpose()?;
    let mut records = state.manager.list_by_owner(&request.owner).await?;
    // The store lists oldest first; sorting again makes the order, and so
    // the cursor, independent of how a store breaks ties.
    records.sort_by_key(|record| Cursor::of(record));
    let mut page = records
        .iter()
        .filter(|record| after.is_none_or(|after| Cursor::of(record) > after));
    let keys: Vec<&Arc<KeyRecord>> = page.by_ref().take(limit as usize).collect();
    let next_cursor = match (page.next(), keys.last()) {
        (Some(_), Some(last)) => Some(Cursor::of(last).to_string()),
        _ => None,
    };
    let view = KeyPage {
        keys: keys
            .into_iter()
            .map(|record| KeyView::from(&**record))
            .collect(),
        next_cursor,
    };
    Ok(json(StatusCode::OK, &view))
}

/// Where a page ends: the last key's creation time and id, the order
/// keys are listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cursor(Duration, KeyId);

impl Cursor {
    fn of(record: &KeyRecord) -> Self {
        Self(
            record
                .created_at()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            record.id,
        )
    }

    fn parse(text: &str) -> Result<Self, Problem> {
        let invalid = || {
            Problem::new(
                ProblemType::INVALID_QUERY,
                "\"cursor\" is not a cursor this API handed out; pass a page's next_cursor as it is.",
            )
        };
        let mut parts = text.splitn(3, '.');
        let (Some(secs), Some(nanos), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid());
        };
        let secs: u64 = secs.parse().map_err(|_| invalid())?;
        let nanos: u32 = nanos.parse().map_err(|_| invalid())?;
        if nanos >= 1_000_000_000
            || SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_secs(secs))
                .is_none()
        {
            return Err(invalid());
        }
        let id = id.parse().map_err(|_| invalid())?;
        Ok(Self(Duration::new(secs, nanos), id))
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{:09}.{}",
            self.0.as_secs(),
            self.0.subsec_nanos(),
            self.1
        )
    }
}

/// A key that exists, or the 404 that says it does not.
pub(crate) async fn find(state: &AdminState, id: &KeyId) -> Result<Arc<KeyRecord>, Problem> {
    state
        .manager
        .find(id)
        .await?
        .ok_or_else(|| Problem::from(crate::manager::ManagerError::NotFound(*id)))
}

/// Get one key.
#[utoipa::path(
    get,
    path = "/keys/{key_id}",
    tag = "keys",
    operation_id = "get_key",
    params(("key_id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The key", body = KeyView),
        (status = 400, description = "Not a key id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_key(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let record = find(&state, &key_id(&id)?).await?;
    Ok(json(StatusCode::OK, &KeyView::from(&*record)))
}

/// Revoke a key, effective on its next request. Final; revoking again
/// changes nothing.
#[utoipa::path(
    delete,
    path = "/keys/{key_id}",
    tag = "keys",
    operation_id = "revoke_key",
    params(("key_id" = String, Path, description = "The key's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "Not a key id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn revoke_key(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    state.manager.revoke(&key_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Rotate a key: a successor with the same owner, scopes, limits and
/// metadata; the old key keeps working for the grace period. The answer
/// holds the successor's plaintext key, this once.
#[utoipa::path(
    post,
    path = "/keys/{key_id}/rotate",
    tag = "keys",
    operation_id = "rotate_key",
    params(("key_id" = String, Path, description = "The key's id")),
    request_body = RotateKey,
    responses(
        (status = 201, description = "The successor, with its plaintext (shown once), and the old key", body = RotatedKeyView),
        (status = 400, description = "Not a key id, a malformed body or grace period", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key is revoked, expired, or signs requests", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn rotate_key(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, Problem> {
    let id = key_id(&id)?;
    let request: RotateKey = body(&bytes)?;
    let grace = seconds("grace_seconds", request.grace_seconds, 0)?;
    let rotated = state.manager.rotate(&id, grace).await?;
    let view = RotatedKeyView {
        key: rotated.key.expose_secret().to_owned(),
        record: KeyView::from(&rotated.record),
        previous: KeyView::from(&rotated.previous),
    };
    Ok(json(StatusCode::CREATED, &view))
}

/// Disable a key until it is enabled again.
#[utoipa::path(
    post,
    path = "/keys/{key_id}/disable",
    tag = "keys",
    operation_id = "disable_key",
    params(("key_id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The disabled key", body = KeyView),
        (status = 400, description = "Not a key id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key is revoked", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn disable_key(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let record = state.manager.disable(&key_id(&id)?).await?;
    Ok(json(StatusCode::OK, &KeyView::from(&record)))
}

/// Enable a disabled key.
#[utoipa::path(
    post,
    path = "/keys/{key_id}/enable",
    tag = "keys",
    operation_id = "enable_key",
    params(("key_id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The enabled key", body = KeyView),
        (status = 400, description = "Not a key id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key is revoked", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn enable_key(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let record = state.manager.enable(&key_id(&id)?).await?;
    Ok(json(StatusCode::OK, &KeyView::from(&record)))
}

/// Replace a key's scopes.
#[utoipa::path(
    put,
    path = "/keys/{key_id}/scopes",
    tag = "keys",
    operation_id = "set_key_scopes",
    params(("key_id" = String, Path, description = "The key's id")),
    request_body = SetScopes,
    responses(
        (status = 200, description = "The key with its new scopes", body = KeyView),
        (status = 400, description = "Not a key id, a malformed body or scope", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A scope the caller does not hold", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key is revoked", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn set_key_scopes(
    State(state): State<AdminState>,
    caller: Principal,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, Problem> {
    let id = key_id(&id)?;
    let request: SetScopes = body(&bytes)?;
    let scopes = grantable_scopes(&state, &caller, &request.scopes)?;
    let record = state.manager.update_scopes(&id, scopes).await?;
    Ok(json(StatusCode::OK, &KeyView::from(&record)))
}

/// Replace a key's limits (a move to another tier).
#[utoipa::path(
    put,
    path = "/keys/{key_id}/limits",
    tag = "keys",
    operation_id = "set_key_limits",
    params(("key_id" = String, Path, description = "The key's id")),
    request_body = SetLimits,
    responses(
        (status = 200, description = "The key with its new limits", body = KeyView),
        (status = 400, description = "Not a key id or a malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key is revoked", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Limits that cannot apply", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn set_key_limits(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, Problem> {
    let id = key_id(&id)?;
    let request: SetLimits = body(&bytes)?;
    let limits = limits(&request.limits)?;
    let record = state.manager.update_limits(&id, limits).await?;
    Ok(json(StatusCode::OK, &KeyView::from(&record)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_junk() {
        let cursor = Cursor(
            Duration::new(1_700_000_000, 5),
            "AbCdEf012345".parse().unwrap(),
        );
        assert_eq!(Cursor::parse(&cursor.to_string()).unwrap(), cursor);
        for junk in [
            "",
            "1",
            "1.2",
            "x.0.AbCdEf012345",
            "1.1000000000.AbCdEf012345",
            "1.0.short",
            "99999999999999999999.0.AbCdEf012345",
        ] {
            assert!(Cursor::parse(junk).is_err(), "{junk:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_cursor_text_is_an_answer_never_a_panic(text in "\\PC{0,40}") {
            let _ = Cursor::parse(&text);
        }

        #[test]
        fn every_cursor_reads_back(
            secs in 0u64..=4_000_000_000,
            nanos in 0u32..1_000_000_000,
            id in "[A-Za-z0-9]{12}",
        ) {
            let cursor = Cursor(Duration::new(secs, nanos), id.parse().unwrap());
            proptest::prop_assert_eq!(Cursor::parse(&cursor.to_string()).unwrap(), cursor);
        }
    }
}
