//! `GET /v1/openapi.json`: generated from the handlers' annotations and the
//! request and response types, never written by hand.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Otturnaut agent API", description = "Deploys, status and maintenance of the apps on one server."),
    paths(
        crate::apps::health,
        crate::apps::list,
        crate::apps::one,
        crate::apps::undeploy,
        crate::apps::reconcile,
        crate::apps::logs,
        crate::deploys::deploy,
        crate::deploys::cancel,
        crate::deploys::rollback,
        crate::apps::releases,
        crate::apps::prune,
        crate::apps::metrics,
        document,
    ),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "agent",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object),
              (status = 401, description = "No or wrong bearer token", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
