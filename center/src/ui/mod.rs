//! The web dashboard, served by the center under `/ui/` (`/` redirects there).
//!
//! Server-rendered HTML with one stylesheet built into the binary, and no build step. The one
//! script, `live.js` (also built in), follows a running task's output; only the task page
//! loads it and only that page's Content-Security-Policy allows scripts (from the center
//! itself). Every page reads the database (through [`crate::store::Store`]'s `dashboard_*`
//! reads) and the in-memory registry of auth ids the API authorizes with, so a page shows
//! and allows exactly what the signed-in auth id may do through the API. Changes run the same
//! code as the API calls and are audited with the auth id, their action prefixed `ui/`.
//!
//! Sessions and CSRF tokens: [`session`].

mod apps;
mod batches;
mod cron_form;
mod html;
mod live;
mod pages;
mod people;
mod queues;
pub mod session;

use crate::api::request::Caller;
use crate::api::ApiState;
use crate::store::Role;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use session::{Session, SessionKeys};

/// What the dashboard adds to the API's state: the key sessions are signed with.
pub struct Dashboard {
    keys: SessionKeys,
}

impl Dashboard {
    pub fn new(signer: &elves_shared::crypto::InstructionSigner) -> Dashboard {
        Dashboard {
            keys: SessionKeys::from_signer(signer),
        }
    }
}

const STYLE: &str = include_str!("assets/style.css");

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(root))
        .route("/ui", web::get().to(root))
        .route("/ui/style.css", web::get().to(style))
        .route("/ui/login", web::get().to(pages::login_form))
        .route("/ui/login", web::post().to(pages::login))
        .route("/ui/logout", web::post().to(pages::logout))
        .route("/ui/", web::get().to(pages::overview))
        .route("/ui/agents", web::get().to(pages::agents))
        .route("/ui/agents/{id}", web::get().to(pages::agent))
        .route("/ui/tasks", web::get().to(pages::tasks))
        .route("/ui/tasks/{id}", web::get().to(pages::task))
        .route("/ui/tasks/{id}/rerun", web::post().to(pages::rerun))
        .route("/ui/tasks/{id}/follow", web::get().to(live::follow))
        .route("/ui/live.js", web::get().to(live::script))
        .route("/ui/queues", web::get().to(queues::queues))
        .route("/ui/queues/{id}", web::get().to(queues::queue))
        .route("/ui/queues/{id}/stop", web::post().to(queues::stop))
        .route("/ui/batches", web::get().to(batches::batches))
        .route("/ui/batches/{id}", web::get().to(batches::batch))
        .route("/ui/batches/{id}/retry", web::post().to(batches::retry))
        .route("/ui/crons/edit", web::get().to(cron_form::edit_form))
        .route("/ui/crons/edit", web::post().to(cron_form::edit))
        .route("/ui/run", web::get().to(pages::run_form))
        .route("/ui/run", web::post().to(pages::run))
        .route("/ui/crons", web::get().to(pages::crons))
        .route("/ui/crons", web::post().to(pages::crons_change))
        .route("/ui/apps", web::get().to(apps::apps))
        .route("/ui/apps/upload", web::post().to(apps::upload))
        .route("/ui/apps/online", web::post().to(apps::online))
        .route("/ui/admin", web::get().to(pages::admin))
        .route("/ui/admin/revoke", web::post().to(pages::admin_revoke))
        .route("/ui/admin/grant", web::post().to(people::grant))
        .route("/ui/admin/bind", web::post().to(people::bind));
}

async fn root() -> HttpResponse {
    redirect("/ui/")
}

async fn style() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "max-age=300"))
        .body(STYLE)
}

fn redirect(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .finish()
}

fn html(status: actix_web::http::StatusCode, body: String) -> HttpResponse {
    html_page(status, false, body)
}

/// A page; `live`: it loads `live.js`, the one script, which its policy then allows (from the
/// center only, with its event stream).
fn html_page(status: actix_web::http::StatusCode, live: bool, body: String) -> HttpResponse {
    let policy = if live {
        "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'"
    } else {
        // The pages need nothing from elsewhere and run no script.
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
         frame-ancestors 'none'"
    };
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_SECURITY_POLICY, policy))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        // The upload form's action carries the CSRF token: no page's address leaves the center.
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(body)
}

fn now_ms() -> u64 {
    elves_shared::time::now_unix_ms()
}

/// A signed-in request: its session, what the frame shows, and the caller the API's
/// authorization rules take.
pub(crate) struct Signed {
    session: Session,
    csrf: String,
    is_admin: bool,
    caller: Caller,
}

impl Signed {
    fn viewer(&self, state: &ApiState) -> html::Viewer<'_> {
        html::Viewer {
            auth_id: &self.session.auth_id,
            is_admin: self.is_admin,
            csrf: &self.csrf,
            zone: state.config.cron.zone(),
        }
    }
}

fn cookie_value<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    let header = req.headers().get(header::COOKIE)?.to_str().ok()?;
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

/// The request's session, or the answer sending the browser to the sign-in page (boxed: an
/// answer is large and the session the common case).
fn signed_in(
    req: &HttpRequest,
    state: &ApiState,
    dashboard: &Dashboard,
) -> Result<Signed, Box<HttpResponse>> {
    let registry = state.children.apps.clone();
    let session = cookie_value(req, session::COOKIE).and_then(|cookie| {
        dashboard.keys.verify(cookie, now_ms() / 1000, |auth_id| {
            registry.read().key_of(auth_id)
        })
    });
    let Some(session) = session else {
        return Err(Box::new(redirect("/ui/login")));
    };
    let is_admin = registry.read().role_of(&session.auth_id) == Some(Role::Admin);
    Ok(Signed {
        csrf: dashboard.keys.csrf_token(&session),
        caller: Caller {
            auth_id: session.auth_id.clone(),
        },
        is_admin,
        session,
    })
}

/// A form's fields in order; a name may repeat (the crons' checkboxes).
pub(crate) struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    fn parse(body: &[u8]) -> Form {
        Form {
            pairs: url::form_urlencoded::parse(body)
                .map(|(key, value)| (key.into_owned(), value.into_owned()))
                .collect(),
        }
    }

    fn get(&self, key: &str) -> &str {
        self.pairs
            .iter()
            .find(|(name, _)| name == key)
            .map_or("", |(_, value)| value.as_str())
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
            .collect()
    }
}

/// A signed-in form post carrying its session's CSRF token; anything else is refused.
fn signed_post(
    req: &HttpRequest,
    body: &[u8],
    state: &ApiState,
    dashboard: &Dashboard,
) -> Result<(Signed, Form), Box<HttpResponse>> {
    let signed = signed_in(req, state, dashboard)?;
    let form = Form::parse(body);
    if !dashboard.keys.csrf_ok(&signed.session, form.get("csrf")) {
        return Err(csrf_refused(state, &signed));
    }
    Ok((signed, form))
}

/// The answer to a post without its session's CSRF token (nothing was changed).
fn csrf_refused(state: &ApiState, signed: &Signed) -> Box<HttpResponse> {
    let body = html::page(
        "Refused",
        html::Section::Overview,
        &signed.viewer(state),
        &format!(
            "<h1>Refused</h1>{}",
            html::notice(
                false,
                "This form did not come from your dashboard session (its CSRF token is \
                 missing or stale). Reload the page and try again."
            )
        ),
    );
    Box::new(html(actix_web::http::StatusCode::FORBIDDEN, body))
}
