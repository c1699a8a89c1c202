//! The parts of the OpenAPI document that no single handler states: the security schemes and
//! which operations need which, the error answers every operation shares (the JSON error body
//! for 400, 401, 404, 413, 415, 429, 500 and 503, as the extractors, the router and the domain
//! really answer them), and the request bodies that may be left out.
//!
//! Handlers document their own success answers and the errors particular to them; what is
//! added here never replaces what a handler wrote.

use utoipa::Modify;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    Components, ContentBuilder, OpenApi, Ref, RefOr, Required, Response, ResponseBuilder,
};

/// The security scheme of the customer API: `Authorization: Bearer <API key>`.
pub(crate) const API_KEY: &str = "api_key";
/// The security scheme of device-signed calls: `Authorization: Tessera-Device <JWS>`.
pub(crate) const DEVICE_SIGNATURE: &str = "device_signature";
/// The security scheme of the QR login page: `Authorization: TesseraBrowser <browser token>`.
pub(crate) const BROWSER_TOKEN: &str = "browser_token";
/// The security scheme of the hosted prompt's API: `Authorization: Bearer <browser token>`.
pub(crate) const PROMPT_TOKEN: &str = "prompt_token";

/// Device API operations signed with the enrollment's possession key. The other device
/// operations carry their proof in the body (pairing code and registration, signed responses)
/// or need none (the server's key set).
const DEVICE_SIGNED: &[&str] = &[
    "pending_requests",
    "enrollment_status",
    "unpair",
    "update_push",
    "claim",
];

/// Operations whose JSON body may be left out (read as `{}`).
const OPTIONAL_BODY: &[&str] = &["create_session", "start_pairing"];

/// Operations that may answer `429`: throttled pairing guesses (`rate_limited`), the
/// push-bombing limit (`too_many_authentications`), quotas (`quota_exceeded`), backup-code
/// sending limits.
const MAY_BE_THROTTLED: &[&str] = &[
    "device_pairing",
    "create_authentication",
    "create_session",
    "create_challenge",
    "send_for_authentication",
    "create_flow",
    "act_on_flow",
];

/// Operations that serve static content: no database, no input, no error of their own.
const STATIC: &[&str] = &[
    "page",
    "script",
    "prompt_page",
    "prompt_script",
    "prompt_styles",
    "openapi_document",
    "metrics",
    "oidc_discovery",
];

/// Adds the shared parts; see the module documentation.
pub(crate) struct Contract;

impl Modify for Contract {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Components::new);
        add_security_schemes(components);
        for item in openapi.paths.paths.values_mut() {
            for operation in operations_mut(item) {
                complete(operation);
            }
        }
    }
}

fn add_security_schemes(components: &mut Components) {
    let bearer = |format: &str, description: &str| {
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.bearer_format = Some(format.to_string());
        http.description = Some(description.to_string());
        SecurityScheme::Http(http)
    };
    components.add_security_scheme(
        API_KEY,
        bearer(
            "Tessera API key",
            "The application's API key (`tessera-server admin create-application`): `Authorization: Bearer <API key>`.",
        ),
    );
    components.add_security_scheme(
        DEVICE_SIGNATURE,
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "Authorization",
            "`Authorization: Tessera-Device <JWS>`: a compact JWS (ES256) signed with the enrollment's possession key over `{\"v\":1, \"enrollment_id\", \"method\", \"path\", \"body_digest\" (SHA-256 of the exact body bytes), \"issued_at\", \"nonce\"}`; within 5 minutes of the server's clock, never replayed. See docs/protocol.md, \"Device-authenticated calls\".",
        ))),
    );
    components.add_security_scheme(
        BROWSER_TOKEN,
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "Authorization",
            "`Authorization: TesseraBrowser <browser token>`: the QR session's browser token, which the QR login page reads from its URL fragment.",
        ))),
    );
    let mut prompt = Http::new(HttpAuthScheme::Bearer);
    prompt.description = Some(
        "`Authorization: Bearer <browser token>`: a hosted flow's browser token, which the hosted prompt reads from its URL fragment (`prompt_url`).".to_string(),
    );
    components.add_security_scheme(PROMPT_TOKEN, SecurityScheme::Http(prompt));
    let mut basic = Http::new(HttpAuthScheme::Basic);
    basic.description = Some(
        "OAuth client authentication `client_secret_basic`: the CIBA client's id and secret, each form-urlencoded (RFC 6749 §2.3.1).".to_string(),
    );
    components.add_security_scheme("client_basic", SecurityScheme::Http(basic));
    components.add_security_scheme(
        "client_form",
        SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
            "client_id",
            "OAuth client authentication in the form body: `client_id` with `client_secret` (`client_secret_post`), or `client_assertion_type` and `client_assertion` (`private_key_jwt`, ES256/RS256/PS256, audience the issuer or the endpoint). OpenAPI cannot name form fields as a scheme: they are sent in the body, never in the query.",
        ))),
    );
    components.add_security_scheme(
        "access_token",
        bearer(
            "OAuth access token",
            "An access token from `/oidc/token`: `Authorization: Bearer <access token>`.",
        ),
    );
}

/// Every operation of a path.
fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

fn has_tag(operation: &Operation, tag: &str) -> bool {
    operation
        .tags
        .as_ref()
        .is_some_and(|tags| tags.iter().any(|t| t == tag))
}

fn error_response(description: &str, oauth: bool) -> RefOr<Response> {
    let schema = if oauth {
        "OAuthErrorResponse"
    } else {
        "ErrorBody"
    };
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .build(),
        )
        .build()
        .into()
}

fn complete(operation: &mut Operation) {
    let id = operation.operation_id.clone().unwrap_or_default();
    if STATIC.contains(&id.as_str()) {
        return;
    }
    let oauth = has_tag(operation, "openid");
    let secured = if operation.security.is_some() {
        true
    } else if has_tag(operation, "customer") {
        operation.security = Some(vec![SecurityRequirement::new(
            API_KEY,
            Vec::<String>::new(),
        )]);
        true
    } else if has_tag(operation, "browser") {
        operation.security = Some(vec![SecurityRequirement::new(
            BROWSER_TOKEN,
            Vec::<String>::new(),
        )]);
        true
    } else if DEVICE_SIGNED.contains(&id.as_str()) {
        operation.security = Some(vec![SecurityRequirement::new(
            DEVICE_SIGNATURE,
            Vec::<String>::new(),
        )]);
        true
    } else {
        false
    };
    if OPTIONAL_BODY.contains(&id.as_str())
        && let Some(body) = operation.request_body.as_mut()
    {
        mark_optional(body);
    }
    let has_parameters = operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let has_path_parameters = operation.parameters.as_ref().is_some_and(|p| {
        p.iter()
            .any(|p| p.parameter_in == utoipa::openapi::path::ParameterIn::Path)
    });
    let has_body = operation.request_body.is_some();
    let mut shared: Vec<(&str, &str)> = Vec::new();
    if has_parameters || has_body || oauth {
        shared.push((
            "400",
            if oauth {
                "invalid_request (a malformed form or parameter)"
            } else {
                "invalid_request (a malformed body, query string or path parameter), malformed_json"
            },
        ));
    }
    if secured {
        shared.push((
            "401",
            if oauth {
                "invalid_client, invalid_token"
            } else {
                "unauthorized: a missing or invalid credential"
            },
        ));
    }
    if has_path_parameters {
        shared.push(("404", "not_found, or the named resource does not exist"));
    }
    if has_body || oauth {
        shared.push((
            "413",
            "payload_too_large: the body exceeds --max-body-bytes",
        ));
        if !oauth {
            shared.push((
                "415",
                "unsupported_media_type: the body must be application/json",
            ));
        }
    }
    if MAY_BE_THROTTLED.contains(&id.as_str()) {
        shared.push((
            "429",
            "rate_limited, too_many_authentications, quota_exceeded",
        ));
    }
    shared.push(("500", "internal_error"));
    shared.push((
        "503",
        "service_unavailable: the database does not answer (with Retry-After)",
    ));
    for (status, description) in shared {
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| error_response(description, oauth));
    }
}

fn mark_optional(body: &mut RequestBody) {
    body.required = Some(Required::False);
    if body.description.as_deref() == Some("Optional") {
        body.description = Some("Optional: an empty body reads as `{}`".to_string());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;

    /// The router's source: the test reads its `.route(PATH, METHODS)` calls, so a route added
    /// without documentation fails here, whoever adds it.
    const ROUTER_SOURCE: &str = include_str!("mod.rs");

    /// Path constants the router uses instead of literals.
    fn resolve_path(expr: &str) -> String {
        if let Some(literal) = expr.strip_prefix('"').and_then(|e| e.strip_suffix('"')) {
            return literal.to_string();
        }
        match expr {
            "ciba::BACKCHANNEL_PATH" => crate::domain::ciba::BACKCHANNEL_PATH.to_string(),
            "ciba::TOKEN_PATH" => crate::domain::ciba::TOKEN_PATH.to_string(),
            "ciba::JWKS_PATH" => crate::domain::ciba::JWKS_PATH.to_string(),
            "ciba::USERINFO_PATH" => crate::domain::ciba::USERINFO_PATH.to_string(),
            "ciba::authorize::AUTHORIZE_PATH" => {
                crate::domain::ciba::authorize::AUTHORIZE_PATH.to_string()
            }
            "ciba::authorize::RESUME_PATH" => {
                crate::domain::ciba::authorize::RESUME_PATH.to_string()
            }
            other => panic!(
                "the router names its path with `{other}`: add it to resolve_path in http/openapi.rs"
            ),
        }
    }

    /// The text between the parentheses that open at `open`.
    fn balanced(text: &str, open: usize) -> &str {
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        for (i, c) in text[open..].char_indices() {
            if in_string {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => in_string = true,
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return &text[open + 1..open + i];
                    }
                }
                _ => {}
            }
        }
        panic!("unbalanced parentheses in http/mod.rs")
    }

    /// Every `(path, method)` the router source registers.
    fn routed() -> BTreeSet<(String, String)> {
        const METHODS: [&str; 8] = [
            "get", "post", "put", "delete", "patch", "head", "options", "trace",
        ];
        let mut routes = BTreeSet::new();
        for (at, _) in ROUTER_SOURCE.match_indices(".route(") {
            let inside = balanced(ROUTER_SOURCE, at + ".route".len());
            let (path, chain) = inside
                .split_once(',')
                .expect("a route has a path and methods");
            let path = resolve_path(path.trim());
            let bytes = chain.as_bytes();
            for method in METHODS {
                for (i, _) in chain.match_indices(&format!("{method}(")) {
                    let word_start =
                        i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
                    if word_start {
                        routes.insert((path.clone(), method.to_string()));
                    }
                }
            }
        }
        routes
    }

    fn documented(doc: &OpenApi) -> BTreeSet<(String, String)> {
        let mut operations = BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            for (method, present) in [
                ("get", item.get.is_some()),
                ("post", item.post.is_some()),
                ("put", item.put.is_some()),
                ("delete", item.delete.is_some()),
                ("patch", item.patch.is_some()),
                ("head", item.head.is_some()),
                ("options", item.options.is_some()),
                ("trace", item.trace.is_some()),
            ] {
                if present {
                    operations.insert((path.clone(), method.to_string()));
                }
            }
        }
        operations
    }

    #[test]
    fn every_route_is_documented_with_its_methods_and_nothing_else() {
        let routes = routed();
        assert!(
            routes.len() > 50
                && routes.contains(&("/v1/users".to_string(), "post".to_string()))
                && routes.contains(&("/oidc/token".to_string(), "post".to_string())),
            "the router source was not read as expected: {routes:?}"
        );
        let doc = crate::http::openapi_document();
        let documented = documented(&doc);
        let undocumented: Vec<_> = routes.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from the OpenAPI document (add #[utoipa::path] and list the handler in ApiDoc): {undocumented:?}"
        );
        let unrouted: Vec<_> = documented.difference(&routes).collect();
        assert!(
            unrouted.is_empty(),
            "documented operations the router does not serve: {unrouted:?}"
        );
    }

    #[test]
    fn operation_ids_are_unique_and_every_scheme_used_is_defined() {
        let doc = crate::http::openapi_document();
        let schemes = doc
            .components
            .as_ref()
            .map(|c| c.security_schemes.keys().cloned().collect::<BTreeSet<_>>())
            .unwrap_or_default();
        let mut ids: HashMap<String, usize> = HashMap::new();
        let json = serde_json::to_value(&doc).expect("the document serializes");
        for (path, item) in json["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("a path item") {
                let id = operation["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
                *ids.entry(id.to_string()).or_default() += 1;
                for requirement in operation["security"].as_array().into_iter().flatten() {
                    for name in requirement.as_object().expect("a requirement").keys() {
                        assert!(
                            schemes.contains(name),
                            "{method} {path}: undefined scheme {name}"
                        );
                    }
                }
                let responses = operation["responses"].as_object().expect("responses");
                for (status, response) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        // Browser pages (the OpenID authorize endpoint's) answer a page a person
                        // reads; every API answers the JSON error body.
                        assert!(
                            response["content"]["application/json"]["schema"].is_object()
                                || response["content"]["text/html"].is_object(),
                            "{method} {path} {status} has no JSON body"
                        );
                    }
                }
            }
        }
        let repeated: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
        assert!(repeated.is_empty(), "repeated operation ids: {repeated:?}");
        // The customer API needs its key; an optional body is not required.
        let create_session = &json["paths"]["/v1/qr-sessions"]["post"];
        assert_eq!(
            create_session["security"][0]["api_key"],
            serde_json::json!([])
        );
        assert_eq!(create_session["requestBody"]["required"], false);
        for status in ["400", "401", "413", "415", "429", "500", "503"] {
            assert!(
                create_session["responses"][status].is_object(),
                "POST /v1/qr-sessions lacks {status}"
            );
        }
    }
}
