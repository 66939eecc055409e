//! The v2 API as an OpenAPI 3 document, generated from the `#[utoipa::path]` annotations on the
//! handlers and served at `/api/v2/openapi.json` (no signature, like `/healthz`).
//!
//! A route joins the document with one line in `paths(...)` below; the tests at the end read the
//! route table (`.route(...)` in `api/`) and fail when a registered route is missing here, and
//! when an operation names an error code that `ApiError` does not have.

use crate::error::ApiError;
use actix_web::HttpResponse;
use std::sync::OnceLock;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

/// Where an operation lists the codes its envelope's `error` can carry (besides the 401.x and
/// 500 that every signed call can answer, which the document adds itself).
pub const ERROR_CODES_EXTENSION: &str = "x-error-codes";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "elves center API v2",
        description = "Every v2 call takes its parameters in the query string or as a form body \
(application/x-www-form-urlencoded), by GET or POST alike, and is signed (see the security \
schemes). Every v2 answer is HTTP 200 with the envelope `{flag, error, result}`: `flag` is \
\"true\" with a result, or \"false\" with `error` = `[code]message`; the codes each operation \
can answer are in its `x-error-codes`."
    ),
    paths(
        super::rt::exec,
        super::agent_admin::enroll,
        super::agent_admin::revoke,
        super::keys::list,
        super::keys::add,
        super::keys::use_key,
        super::keys::retire,
        super::queue::create,
        super::queue::add_task,
        super::queue::add_tasks,
        super::queue::commit,
        super::queue::stop,
        super::queue::result,
        super::queue::quick_queue,
        super::task::output,
        super::task::follow,
        super::task::result,
        super::cron::add,
        super::cron::start,
        super::cron::stop,
        super::cron::delete,
        super::cron::detail,
        super::cron::list,
        super::cron::reload,
        super::info::agent_detail,
        super::info_apps::apps,
        super::info_apps::agents,
        super::apps::upload,
        super::apps::create,
        super::apps::online,
        super::apps::versions,
        super::apps::list,
        super::apps::bind,
        super::apps::unbind,
        super::apps::download,
        super::auth_ids::create,
        super::auth_ids::list,
        super::auth_ids::revoke,
        super::auth_ids::grant,
        super::auth_ids::ungrant,
        super::batch::resolve,
        super::batch::create,
        super::batch::status,
        super::batch::result,
        super::batch::stop,
        super::batch::retry,
        super::batch::reload_inventory,
        super::ops::healthz,
        super::ops::metrics,
        openapi_json,
    ),
    components(schemas(Envelope)),
    modifiers(&SignedCalls, &Aliases, &OperationIds),
)]
pub struct ApiDoc;

/// Routes served by the handler of another route: (alias, documented route).
const ALIASES: &[(&str, &str)] = &[
    ("/api/v2/cron/info", "/api/v2/cron/detail"),
    ("/api/v2/info/app", "/api/v2/info/apps"),
];

/// The answer of every v2 call, HTTP 200 whatever the outcome.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the JSON of `elves_shared::wire::Envelope`; never built
pub struct Envelope {
    /// "true" when there is a result, "false" with an error code.
    #[schema(pattern = "^(true|false)$")]
    flag: String,
    /// `[code]message`, or empty with a result.
    error: String,
    /// The operation's result (its description says its shape); null with an error.
    result: serde_json::Value,
}

/// The envelope of an operation whose result has a known shape.
macro_rules! answer {
    ($name:ident, $result:ty) => {
        /// The v2 envelope with this operation's result (HTTP 200 whatever the outcome).
        #[derive(ToSchema)]
        #[allow(dead_code)] // describes JSON; never built
        pub struct $name {
            /// "true" when there is a result, "false" with an error code.
            #[schema(pattern = "^(true|false)$")]
            flag: String,
            /// `[code]message`, or empty with a result.
            error: String,
            /// Null with an error.
            result: Option<$result>,
        }
    };
}

/// `{id}` of what the call made.
#[derive(ToSchema)]
#[allow(dead_code)] // describes JSON; never built
pub struct Created {
    /// 16 lowercase hex characters.
    id: String,
}

/// `queue/addtasks`: the new tasks' ids, in the order they were given.
#[derive(ToSchema)]
#[allow(dead_code)] // describes JSON; never built
pub struct CreatedTasks {
    ids: Vec<String>,
}

/// `queue/qksqueue`: the one-task queue and its task.
#[derive(ToSchema)]
#[allow(dead_code)] // describes JSON; never built
pub struct QuickQueue {
    id: String,
    task_id: String,
}

/// What the agent answered for an rt call; with `wait_s`, only `id` and `state: "running"`
/// when the wait ran out first.
#[derive(ToSchema)]
#[allow(dead_code)] // describes JSON; never built
pub struct RtResult {
    id: String,
    /// "1", "0" or "-1".
    worker_flag: Option<String>,
    worker_message: Option<String>,
    /// Milliseconds.
    worker_costtime: Option<u64>,
    /// "running" when `wait_s` ran out before the result.
    state: Option<String>,
}

/// A queue task's status and result (empty strings and 0 while it has none).
#[derive(ToSchema)]
#[allow(dead_code)] // describes JSON; never built
pub struct QueueTaskResult {
    id: String,
    /// `pendding`, `execing`, `finish`, `stoped` or `skipped`.
    status: String,
    depend_task_id: String,
    flag: String,
    error: String,
    worker_flag: String,
    worker_message: String,
    worker_costtime: u64,
}

/// A task's state and result (empty strings and 0 while it has none).
#[derive(ToSchema)]
#[allow(dead_code)] // describes JSON; never built
pub struct TaskResult {
    id: String,
    /// `pending`, `running`, `finished`, `stopped` or `skipped`.
    state: String,
    flag: String,
    error: String,
    worker_flag: String,
    worker_message: String,
    worker_costtime: u64,
    /// Whether output was dropped over the agent's cap.
    truncated: bool,
}

/// One read of a task's output: ask again from `next` until `ended`.
#[derive(ToSchema)]
#[allow(dead_code)] // describes JSON; never built
pub struct OutputRead {
    offset: u64,
    data: String,
    next: u64,
    ended: bool,
    truncated: bool,
}

answer!(CreatedAnswer, Created);
answer!(CreatedTasksAnswer, CreatedTasks);
answer!(QuickQueueAnswer, QuickQueue);
answer!(RtAnswer, RtResult);
answer!(QueueResultAnswer, std::collections::BTreeMap<String, QueueTaskResult>);
answer!(TaskResultAnswer, TaskResult);
answer!(OutputAnswer, OutputRead);

/// `ip`: the agent, by its configured ip or its id.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes parameters; never built
pub struct AgentParam {
    /// The agent's configured ip or its agent id (403.1 when malformed).
    ip: String,
}

/// `app`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes parameters; never built
pub struct AppParam {
    /// App name (403.3 when malformed).
    app: String,
}

/// What a task runs: the parameters rt, queue, cron and batch tasks share.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes parameters; never built
pub struct TaskSpec {
    /// The app's function (403.7 when malformed).
    func: String,
    /// Any JSON text, passed to the worker byte-exact (403.2 when not JSON).
    param: Option<String>,
    /// Seconds, 1 to 86400; empty or 0 is the default (90) (403.8 otherwise).
    timeout: Option<u32>,
    /// A proxy address the worker should use.
    proxy: Option<String>,
    /// `P` (parallel) or `NP` (default), case-insensitive (403.4 otherwise).
    mode: Option<String>,
}

/// `queue_id`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes parameters; never built
pub struct QueueIdParam {
    /// 16 lowercase hex characters (403.6 when malformed, 412.1 when unknown).
    queue_id: String,
}

/// `cron_id`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes parameters; never built
pub struct CronIdParam {
    /// 16 lowercase hex characters (403.9 when malformed, 411.1 when unknown).
    cron_id: String,
}

/// `id` of the task, batch or auth id a call is about.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes parameters; never built
pub struct IdParam {
    /// The id.
    id: String,
}

/// A page of a long list.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes parameters; never built
pub struct PageParams {
    /// Page number, from 1.
    page: Option<u64>,
    /// Entries per page.
    page_size: Option<u64>,
}

/// The four parameters of a signed call (SPEC §11 "Signing"), as API keys in the query.
const SIGN_PARAMETERS: [(&str, &str); 4] = [
    ("auth_id", "The caller's auth id."),
    (
        "timestamp",
        "Unix seconds; must be within the center's window (401.7).",
    ),
    ("sign_type", "MD5 or HMAC-SHA256 (case-insensitive)."),
    (
        "sign",
        "Lowercase hex. The sign string is path + \"?\" + every parameter but sign and sign_type \
(auth_id and timestamp included) as key=value with unencoded values, sorted by key then value \
(byte order), joined by &. MD5: md5(sign string + auth_key). HMAC-SHA256: \
hmac_sha256(key = auth_key, message = sign string). For uploads they go in the query string.",
    ),
];

/// The codes any signed call can answer, before its own: the signature check (401.1–401.8 in
/// table order, SPEC §11) and an internal error.
fn signed_call_codes() -> Vec<&'static str> {
    [
        ApiError::MissingSignParams(String::new()),
        ApiError::UnknownAuthId(String::new()),
        ApiError::BadSignType(String::new()),
        ApiError::BadSignLength,
        ApiError::SignMismatch,
        ApiError::Forbidden(String::new()),
        ApiError::TimestampOutOfWindow(0),
        ApiError::TimestampNotNumber(String::new()),
        ApiError::Internal(String::new()),
    ]
    .iter()
    .map(ApiError::code)
    .collect()
}

/// Every operation without its own `security` is a signed v2 call: it needs the four sign
/// parameters, its codes start with the signature's, and it answers the envelope.
struct SignedCalls;

impl Modify for SignedCalls {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, description) in SIGN_PARAMETERS {
            components.add_security_scheme(
                name,
                SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                    name,
                    description,
                ))),
            );
        }
        let requirement = SIGN_PARAMETERS.iter().skip(1).fold(
            SecurityRequirement::new(SIGN_PARAMETERS[0].0, Vec::<String>::new()),
            |requirement, (name, _)| requirement.add(*name, Vec::<String>::new()),
        );
        for item in openapi.paths.paths.values_mut() {
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                if operation.security.is_some() {
                    continue;
                }
                operation.security = Some(vec![requirement.clone()]);
                let own = error_codes(operation);
                let mut codes = signed_call_codes();
                codes.extend(own.iter().map(String::as_str));
                let codes: Vec<serde_json::Value> = codes.into_iter().map(Into::into).collect();
                operation
                    .extensions
                    .get_or_insert_with(Extensions::default)
                    .insert(ERROR_CODES_EXTENSION.to_string(), codes.into());
                if operation.responses.responses.is_empty() {
                    let envelope = ResponseBuilder::new()
                        .description(
                            "The v2 envelope, always HTTP 200: the result, or an error code",
                        )
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("Envelope")))
                                .build(),
                        )
                        .build();
                    operation
                        .responses
                        .responses
                        .insert("200".to_string(), envelope.into());
                }
            }
        }
    }
}

/// The codes an operation lists in its `x-error-codes`.
fn error_codes(operation: &Operation) -> Vec<String> {
    operation
        .extensions
        .as_ref()
        .and_then(|extensions| extensions.get(ERROR_CODES_EXTENSION))
        .and_then(serde_json::Value::as_array)
        .map(|codes| {
            codes
                .iter()
                .filter_map(|code| code.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Copies each aliased route's operations to the alias.
struct Aliases;

impl Modify for Aliases {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (alias, of) in ALIASES {
            let Some(mut item) = openapi.paths.paths.get(*of).cloned() else {
                continue;
            };
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                operation.description = Some(format!(
                    "Alias of `{of}`. {}",
                    operation.description.clone().unwrap_or_default()
                ));
            }
            openapi.paths.paths.insert((*alias).to_string(), item);
        }
    }
}

/// Operation ids from the paths, unique as OpenAPI wants them (handlers in different modules
/// share names such as `create`): `rt_exec` for `/api/v2/rt/exec`, with `_get` for the GET of a
/// route that takes GET and POST alike.
struct OperationIds;

impl Modify for OperationIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let base: String = path
                .trim_start_matches("/api/v2/")
                .trim_start_matches('/')
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>()
                .split('_')
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join("_");
            let both = item.get.is_some() && item.post.is_some();
            if let Some(get) = item.get.as_mut() {
                get.operation_id = Some(if both {
                    format!("{base}_get")
                } else {
                    base.clone()
                });
            }
            if let Some(post) = item.post.as_mut() {
                post.operation_id = Some(base);
            }
        }
    }
}

/// The document as JSON text, made once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|err| format!("{{\"error\": \"openapi: {err}\"}}"))
    })
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v2/openapi.json",
    tag = "ops",
    security(()),
    responses((status = 200, description = "This OpenAPI document", content_type = "application/json"))
)]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// A route as the route table registers it: its path and methods (`web::route()` is any
    /// method: a v2 call takes GET and POST alike).
    fn registered_routes() -> BTreeMap<String, BTreeSet<String>> {
        let api_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
        let mut routes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut files: Vec<_> = std::fs::read_dir(&api_dir)
            .expect("api dir")
            .map(|entry| entry.expect("api dir entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("api source");
            let code: String = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or("")
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for other in ["web::resource(", "web::scope(", ".service("] {
                assert!(
                    !code.contains(other),
                    "{}: registers a route with {other}, which this test cannot read: use \
                     cfg.route(\"/literal/path\", web::<method>().to(handler))",
                    file.display()
                );
            }
            for (at, _) in code.match_indices(".route(") {
                let rest = code[at + ".route(".len()..].trim_start();
                let path = rest
                    .strip_prefix('"')
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or_else(|| {
                        panic!(
                            "{}: a route whose path is not a string literal: {}",
                            file.display(),
                            &rest[..rest.len().min(60)]
                        )
                    });
                let method = rest
                    .split_once("web::")
                    .map(|(_, after)| after.split('(').next().unwrap_or(""))
                    .unwrap_or("");
                let methods: &[&str] = match method {
                    "route" => &["get", "post"],
                    "get" => &["get"],
                    "post" => &["post"],
                    other => panic!("{}: route {path}: unknown method {other:?}", file.display()),
                };
                routes
                    .entry(path.to_string())
                    .or_default()
                    .extend(methods.iter().map(|method| method.to_string()));
            }
        }
        routes
    }

    fn document_json() -> serde_json::Value {
        serde_json::from_str(document()).expect("the document is JSON")
    }

    fn documented_routes() -> BTreeMap<String, BTreeSet<String>> {
        let doc = document_json();
        doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .map(|(path, item)| {
                let methods = ["get", "post", "put", "delete", "patch"]
                    .into_iter()
                    .filter(|method| item.get(*method).is_some())
                    .map(str::to_string)
                    .collect();
                (path.clone(), methods)
            })
            .collect()
    }

    /// The codes `ApiError::code` can answer: the error table.
    fn error_table_codes() -> BTreeSet<String> {
        let source =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/error.rs"))
                .expect("error.rs");
        let start = source.find("pub fn code(&self)").expect("ApiError::code");
        let end = start
            + source[start..]
                .find("fn message(")
                .expect("ApiError::message");
        let codes: BTreeSet<String> = source[start..end]
            .match_indices("=> \"")
            .filter_map(|(at, arrow)| source[start + at + arrow.len()..].split('"').next())
            .map(str::to_string)
            .collect();
        assert!(
            codes.len() > 30,
            "read too few codes from error.rs: {codes:?}"
        );
        codes
    }

    fn documented_codes() -> BTreeMap<String, BTreeSet<String>> {
        let doc = document_json();
        let mut codes = BTreeMap::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                let listed = operation[ERROR_CODES_EXTENSION]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|code| code.as_str().expect("a code is a string").to_string())
                    .collect::<BTreeSet<_>>();
                codes.insert(format!("{method} {path}"), listed);
            }
        }
        codes
    }

    #[test]
    fn every_registered_route_is_documented_with_its_methods() {
        let registered = registered_routes();
        assert!(
            registered.contains_key("/api/v2/rt/exec") && registered.len() > 40,
            "the route table was not read: {registered:?}"
        );
        let documented = documented_routes();
        for (path, methods) in &registered {
            let Some(doc_methods) = documented.get(path) else {
                panic!(
                    "route {path} is not in the OpenAPI document: annotate its handler with \
                     #[utoipa::path(...)] and add it to paths(...) in api/openapi.rs"
                );
            };
            assert_eq!(doc_methods, methods, "methods of {path}");
        }
        for path in documented.keys() {
            assert!(
                registered.contains_key(path),
                "the document has {path}, which no route registers"
            );
        }
    }

    /// The route table the test reads is the one the center serves: every documented
    /// operation reaches a handler of `configure` (without the handlers' state it answers
    /// 500, never 404 or 405).
    #[actix_web::test]
    async fn every_documented_operation_is_served() {
        use actix_web::{http::Method, test, App};
        let app = test::init_service(App::new().configure(super::super::configure)).await;
        for (path, methods) in documented_routes() {
            let uri = path.replace("{sha256}", &"ab".repeat(32));
            for method in methods {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
                let request = test::TestRequest::default()
                    .method(method.clone())
                    .uri(&uri)
                    .to_request();
                let status = test::call_service(&app, request).await.status();
                assert!(
                    status != actix_web::http::StatusCode::NOT_FOUND
                        && status != actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {uri}: {status}, not served by api::configure"
                );
            }
        }
    }

    #[test]
    fn documented_error_codes_are_the_error_table() {
        let table = error_table_codes();
        let documented = documented_codes();
        let mut used = BTreeSet::new();
        for (operation, codes) in &documented {
            for code in codes {
                assert!(
                    table.contains(code),
                    "{operation} documents {code}, which ApiError does not have"
                );
                used.insert(code.clone());
            }
        }
        let undocumented: Vec<_> = table.difference(&used).collect();
        assert!(
            undocumented.is_empty(),
            "codes of ApiError that no operation documents: {undocumented:?}"
        );
    }

    #[test]
    fn signed_calls_carry_the_sign_scheme_and_ops_endpoints_do_not() {
        let doc = document_json();
        let exec = &doc["paths"]["/api/v2/rt/exec"]["post"];
        assert_eq!(
            exec["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/RtAnswer"
        );
        assert!(doc["components"]["schemas"]["RtResult"]["properties"]["worker_flag"].is_object());
        let commit = &doc["paths"]["/api/v2/queue/commit"]["post"];
        let requirement = exec["security"][0].as_object().expect("rt/exec is signed");
        let names: BTreeSet<&str> = requirement.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            BTreeSet::from(["auth_id", "timestamp", "sign_type", "sign"])
        );
        assert_eq!(exec[ERROR_CODES_EXTENSION][0], "401.1");
        assert_eq!(
            commit["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Envelope"
        );
        for name in ["auth_id", "timestamp", "sign_type", "sign"] {
            assert_eq!(doc["components"]["securitySchemes"][name]["in"], "query");
        }
        for open in ["/healthz", "/metrics", "/api/v2/openapi.json"] {
            let security = &doc["paths"][open]["get"]["security"];
            assert_eq!(
                security,
                &serde_json::json!([{}]),
                "{open} needs no signature"
            );
        }
        let alias = &doc["paths"]["/api/v2/cron/info"]["get"];
        assert_eq!(
            alias["parameters"],
            doc["paths"]["/api/v2/cron/detail"]["get"]["parameters"]
        );
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = document_json();
        let mut seen = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                let id = operation["operationId"].as_str().expect("an operation id");
                assert!(seen.insert(id.to_string()), "{method} {path}: {id} twice");
            }
        }
        assert!(seen.contains("rt_exec") && seen.contains("rt_exec_get"));
    }
}
