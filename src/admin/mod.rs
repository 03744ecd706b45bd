//! A ready admin API (feature `admin`): an axum [`Router`] over a
//! [`KeyManager`] and a [`UsageSource`], protected by keyward itself, with
//! an OpenAPI 3.1 document and a read-only usage page.
//!
//! Nest it where you want it (`Router::nest("/admin", ..)`), or merge it
//! at the root. Every route but two needs a key with the admin scope
//! (default `keys:admin`; the usage routes may ask another,
//! [`AdminApi::usage_scope`]):
//!
//! | route | what it does |
//! |---|---|
//! | `POST /keys` | issue a key; the answer holds the plaintext key, once |
//! | `GET /keys?owner=..&limit=..&cursor=..` | an owner's keys, oldest first, a page at a time |
//! | `GET /keys/{key_id}` | one key |
//! | `DELETE /keys/{key_id}` | revoke it (final) |
//! | `POST /keys/{key_id}/rotate` | a successor (its plaintext, once); the old key lives on for `grace_seconds` |
//! | `POST /keys/{key_id}/disable`, `.../enable` | switch it off and on |
//! | `PUT /keys/{key_id}/scopes`, `.../limits` | replace its scopes or limits |
//! | `GET /keys/{key_id}/usage`, `GET /owners/{owner}/usage`, `GET /usage` | usage over a time range (`from`, `to`, RFC 3339; default the last 24 h), as totals or a series (`step_minutes`) |
//! | `GET /openapi.json` | the OpenAPI 3.1 document (no key) |
//! | `GET /usage` with `Accept: text/html` | the usage page (no key: it asks for one) |
//!
//! A key is never shown but in the answers of issue and rotate; records
//! are shown without their hash. A caller may only grant scopes it holds
//! itself (unless [`AdminApi::grant_any_scope`]).
//!
//! Errors are RFC 9457 problem documents (`application/problem+json`)
//! whose `type` is one of [`ProblemType::ALL`]'s stable URIs, and whose
//! `detail` says what is wrong: 400 for a malformed body, query, scope or
//! key id (also an unknown field or a duration out of range), 403 for a
//! scope the caller may not grant, 404 for an unknown key, 409 for a key
//! that is revoked (or expired, or signing, for rotation), 422 for limits
//! that cannot apply, 503 when the store or usage source fails. Refusals
//! of the key itself (401, 403, 429) are keyward's usual ones.
//!
//! The OpenAPI document is generated from the handlers and types (with
//! utoipa), so it lists exactly the routes the router serves.
//!
//! # The usage page
//!
//! `GET /usage` from a browser is a static page: a form asks for a key and
//! an owner, and an inline script (allowed by its hash in a strict
//! Content-Security-Policy; no external asset) loads the owner's keys and
//! their last 24 hours from this API, with the key in the `X-API-Key`
//! header, never in a URL, a cookie or storage, and draws one SVG chart
//! per key, allowed and denied requests apart.
//!
//! # Example
//!
//! ```
//! use axum::{body::Body, Router};
//! use http::{Request, StatusCode};
//! use http_body_util::BodyExt;
//! use keyward::admin::AdminApi;
//! use keyward::manager::IssueOptions;
//! use keyward::usage::RollupSink;
//! use keyward::{KeyFormat, Keyward, MemoryStore};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let usage = RollupSink::new(); // the usage layer feeds it; the API reads it
//! let keyward = Keyward::new(MemoryStore::new(), KeyFormat::new("sk_live")?)
//!     .with_sink(usage.clone());
//! let admin = keyward
//!     .manager()
//!     .issue(IssueOptions::new("ops").scopes("keys:admin".parse()?))
//!     .await?;
//!
//! let app: Router = Router::new()
//!     .nest("/admin", AdminApi::new(keyward.manager(), usage).router())
//!     .layer(keyward.usage_layer());
//!
//! let request = Request::post("/admin/keys")
//!     .header("x-api-key", admin.key.expose_secret())
//!     .body(Body::from(r#"{"owner": "acme", "scopes": []}"#))?;
//! let answer = app.clone().oneshot(request).await?;
//! assert_eq!(answer.status(), StatusCode::CREATED);
//! let body: serde_json::Value = serde_json::from_slice(&answer.into_body().collect().await?.to_bytes())?;
//! assert!(body["key"].as_str().unwrap().starts_with("sk_live_"));
//!
//! let document = app.oneshot(Request::get("/admin/openapi.json").body(Body::empty())?).await?;
//! assert_eq!(document.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```

mod keys;
mod model;
mod openapi;
mod page;
mod problem;
mod usage;

use std::fmt;
use std::sync::{Arc, OnceLock};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Serialize;
use utoipa::OpenApi as _;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

pub use problem::{Problem, ProblemType};

use crate::auth::{AuthLayer, Authenticator};
use crate::authorize::RequireScopes;
use crate::limit::{Limits, RateLimitLayer};
use crate::manager::KeyManager;
use crate::scope::Scope;
use crate::usage::UsageSource;

/// The admin API's settings; [`router`](Self::router) builds it. See the
/// [module docs](self).
#[derive(Clone)]
#[must_use]
pub struct AdminApi {
    manager: KeyManager,
    usage: Arc<dyn UsageSource>,
    auth: AuthLayer,
    rate_limit: Option<RateLimitLayer>,
    scope: Scope,
    usage_scope: Option<Scope>,
    default_limits: Limits,
    grant_any_scope: bool,
}

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AdminState {
    manager: KeyManager,
    usage: Arc<dyn UsageSource>,
    default_limits: Limits,
    grant_any_scope: bool,
    /// The OpenAPI document, set once the router is built.
    document: Arc<OnceLock<utoipa::openapi::OpenApi>>,
}

/// The scope the admin routes require unless told otherwise.
pub const DEFAULT_SCOPE: &str = "keys:admin";

impl AdminApi {
    /// An admin API over `manager`'s keys and `usage`'s counts (the
    /// in-memory [`RollupSink`](crate::usage::RollupSink), `PgUsage`, or
    /// any [`UsageSource`]).
    ///
    /// It authenticates with an [`AuthLayer`] on the manager's store,
    /// format, hasher and clock, and requires the scope `keys:admin`.
    /// Keys it issues get no limits unless the request names some (see
    /// [`default_limits`](Self::default_limits)).
    pub fn new(manager: KeyManager, usage: impl UsageSource) -> Self {
        let authenticator =
            Authenticator::new(Arc::clone(manager.store()), manager.format().clone())
                .with_hasher(manager.hasher().clone())
                .with_clock(Arc::clone(manager.clock()));
        Self {
            manager,
            usage: Arc::new(usage),
            auth: AuthLayer::from_authenticator(authenticator),
            rate_limit: None,
            scope: Scope::new(DEFAULT_SCOPE).unwrap_or_else(|_| Scope::everything()),
            usage_scope: None,
            default_limits: Limits::none(),
            grant_any_scope: false,
        }
    }

    /// Requires `scope` for every route (and for the usage routes unless
    /// [`usage_scope`](Self::usage_scope) says otherwise).
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Requires `scope` for the usage routes instead (e.g. `usage:read`).
    pub fn usage_scope(mut self, scope: Scope) -> Self {
        self.usage_scope = Some(scope);
        self
    }

    /// Authenticates with `layer` instead (your sources, failed-attempt
    /// throttle, responder): it must check keys against the same store.
    pub fn auth_layer(mut self, layer: AuthLayer) -> Self {
        self.auth = layer;
        self
    }

    /// Limits the callers' keys with `layer` (inside authentication).
    pub fn rate_limit_layer(mut self, layer: RateLimitLayer) -> Self {
        self.rate_limit = Some(layer);
        self
    }

    /// The limits of keys issued without `limits` in the request.
    pub fn default_limits(mut self, limits: Limits) -> Self {
        self.default_limits = limits;
        self
    }

    /// Lets a caller grant any scope, also one it does not hold itself.
    ///
    /// **Weaker**: by default a caller may only hand out (and set) scopes
    /// its own key holds, so an admin key cannot mint a key more powerful
    /// than itself.
    pub fn grant_any_scope(mut self) -> Self {
        self.grant_any_scope = true;
        self
    }

    /// The router: nest it (`Router::nest("/admin", api.router())`) or
    /// merge it.
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        self.build().0
    }

    /// The OpenAPI 3.1 document (JSON) of the routes, as served at
    /// `openapi.json` (there with a `servers` entry for where it is
    /// nested).
    pub fn openapi_json(&self) -> String {
        let (_, document) = self.clone().build::<()>();
        document.to_pretty_json().unwrap_or_default()
    }

    fn build<S: Clone + Send + Sync + 'static>(self) -> (Router<S>, utoipa::openapi::OpenApi) {
        let usage_scope = self
            .usage_scope
            .clone()
            .unwrap_or_else(|| self.scope.clone());
        let state = AdminState {
            manager: self.manager.clone(),
            usage: Arc::clone(&self.usage),
            default_limits: self.default_limits.clone(),
            grant_any_scope: self.grant_any_scope,
            document: Arc::new(OnceLock::new()),
        };
        let keys = |route| self.protect(route, &self.scope);
        let usage = |route| self.protect(route, &usage_scope);
        let (all_schemas, all_paths, all_usage) = usage(routes!(usage::all_usage));
        let (router, document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
            .routes(keys(routes!(keys::issue_key, keys::list_keys)))
            .routes(keys(routes!(keys::get_key, keys::revoke_key)))
            .routes(keys(routes!(keys::rotate_key)))
            .routes(keys(routes!(keys::disable_key)))
            .routes(keys(routes!(keys::enable_key)))
            .routes(keys(routes!(keys::set_key_scopes)))
            .routes(keys(routes!(keys::set_key_limits)))
            .routes(usage(routes!(usage::key_usage)))
            .routes(usage(routes!(usage::owner_usage)))
            // A browser's navigation to `/usage` gets the page before
            // authentication asks it for a key.
            .routes((
                all_schemas,
                all_paths,
                all_usage.route_layer(axum::middleware::from_fn(page::page_for_browsers)),
            ))
            .routes(routes!(openapi::openapi_json))
            .split_for_parts();
        let _ = state.document.set(document.clone());
        (router.with_state(state), document)
    }

    /// Puts `route` behind the scope check, the rate limit (if any) and
    /// authentication, in that order from the inside. Route layers: a
    /// method a path does not serve is answered `405` without a key.
    fn protect(
        &self,
        (schemas, paths, route): UtoipaMethodRouter<AdminState>,
        scope: &Scope,
    ) -> UtoipaMethodRouter<AdminState> {
        let mut route = route.route_layer(RequireScopes::all([scope.clone()]));
        if let Some(limit) = &self.rate_limit {
            route = route.route_layer(limit.clone());
        }
        (schemas, paths, route.route_layer(self.auth.clone()))
    }
}

impl fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminApi")
            .field("manager", &self.manager)
            .field("usage", &self.usage)
            .field("scope", &self.scope)
            .field("usage_scope", &self.usage_scope)
            .field("default_limits", &self.default_limits)
            .field("grant_any_scope", &self.grant_any_scope)
            .finish_non_exhaustive()
    }
}

/// A JSON answer.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(error) => Problem::unavailable("Writing the answer", &error).into_response(),
    }
}
