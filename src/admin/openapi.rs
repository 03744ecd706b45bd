//! The OpenAPI 3.1 document: utoipa collects the operations from the
//! handlers' `#[utoipa::path]` as the router registers them; this is the
//! rest (title, security schemes, problem schema) and the route serving it.

use axum::extract::{OriginalUri, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::openapi::OpenApi as Document;
use utoipa::Modify;

use super::{json, AdminState, Problem};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "keyward admin API",
        description = "Issue, list, rotate, revoke, disable and enable API keys, change their scopes and limits, and read their usage. Errors are RFC 9457 problem documents.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    components(schemas(Problem)),
    modifiers(&Security),
    security(("bearer" = []), ("api_key" = [])),
    tags(
        (name = "keys", description = "The key lifecycle"),
        (name = "usage", description = "Requests counted per key"),
        (name = "meta", description = "This document"),
    )
)]
pub(crate) struct ApiDoc;

/// A key in `Authorization: Bearer` or in `X-API-Key`.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key with the admin scope"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An API key with the admin scope",
            ))),
        );
    }
}

/// This document (OpenAPI 3.1), with the prefix the router is nested at
/// as its server.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    security(()),
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
pub(crate) async fn openapi_json(
    State(state): State<AdminState>,
    uri: Uri,
    OriginalUri(original): OriginalUri,
) -> Response {
    let Some(document) = state.document.get() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let mut document = document.clone();
    // Nested at `/admin`, this route sees `/openapi.json` and the original
    // `/admin/openapi.json`: the difference is where the paths start.
    let full = original.path();
    let prefix = full.strip_suffix(uri.path()).unwrap_or("");
    document.servers = Some(vec![Server::new(if prefix.is_empty() {
        "/"
    } else {
        prefix
    })]);
    json(StatusCode::OK, &document)
}
