//! Agents' broker users, through the RabbitMQ management HTTP API (`[bus] management_url`):
//! what `agent/enroll` creates and `agent/revoke` deletes.
//!
//! An enrolled agent's user is named after the agent id (the center takes its results and
//! heartbeats only when RabbitMQ's validated `user-id` is that id, `bus.agent_accounts`), and
//! may touch nothing but its own queue and the namespace's exchange:
//! - configure: the exchange (every elves connection declares it) and `<ns>.agent.<id>`;
//! - write: the exchange (results, heartbeats, output), its queue (binding it) and
//!   `amq.default`, the default exchange RT results go through to the caller's reply queue;
//! - read: its queue (consuming) and the exchange (binding its queue to it);
//! - on the exchange (topic permissions), publishing only to `center.result`,
//!   `center.heartbeat`, `center.output` and `processor.*`, binding only `agent.<id>`.
//!
//! Publishing through `amq.default` reaches any queue by name, but nothing an agent puts
//! there is taken on its word: instructions need the center's signature, results and
//! heartbeats the agent's own validated user-id.

use reqwest::StatusCode;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("enrolling is off: the center's configuration has no `[bus] management_url`")]
    NotConfigured,
    #[error("`[bus] management_url` {0}")]
    BadUrl(String),
    #[error("the broker's management API: {0}")]
    Broker(String),
}

/// A client of the management API of the broker the center uses.
pub struct BrokerAdmin {
    http: reqwest::Client,
    base: url::Url,
    user: String,
    password: String,
    vhost: String,
}

impl BrokerAdmin {
    /// From `[bus] management_url` (with the administrator's credentials) and the vhost of the
    /// center's own `bus.url`.
    pub fn new(management_url: &str, bus_url: &str) -> Result<BrokerAdmin, AdminError> {
        if management_url.trim().is_empty() {
            return Err(AdminError::NotConfigured);
        }
        let mut base = url::Url::parse(management_url.trim())
            .map_err(|err| AdminError::BadUrl(format!("does not parse: {err}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(AdminError::BadUrl(
                "must be http:// or https://".to_string(),
            ));
        }
        let decode = |text: &str| {
            percent_decode(text).ok_or_else(|| {
                AdminError::BadUrl("has a user or password that is not UTF-8".to_string())
            })
        };
        let user = decode(base.username())?;
        let password = decode(base.password().unwrap_or(""))?;
        if user.is_empty() {
            return Err(AdminError::BadUrl(
                "names no user: http://<admin user>:<password>@host:15672".to_string(),
            ));
        }
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let vhost = vhost_of(bus_url)?;
        Ok(BrokerAdmin {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .map_err(|err| AdminError::Broker(err.to_string()))?,
            base,
            user,
            password,
            vhost,
        })
    }

    fn endpoint(&self, segments: &[&str]) -> Result<url::Url, AdminError> {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| AdminError::BadUrl("cannot take a path".to_string()))?;
            path.pop_if_empty().push("api");
            // Each segment is percent-encoded whole: the vhost "/" becomes "%2F".
            path.extend(segments);
        }
        Ok(url)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, String), AdminError> {
        let url = self.endpoint(segments)?;
        let mut request = self
            .http
            .request(method.clone(), url)
            .basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|err| AdminError::Broker(format!("{method} /api/{}: {err}", segments[0])))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status == StatusCode::UNAUTHORIZED {
            return Err(AdminError::Broker(format!(
                "user {} was refused (401): check `[bus] management_url`",
                self.user
            )));
        }
        Ok((status, text))
    }

    /// Whether a broker user `name` exists.
    pub async fn user_exists(&self, name: &str) -> Result<bool, AdminError> {
        let (status, text) = self
            .send(reqwest::Method::GET, &["users", name], None)
            .await?;
        match status {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            other => Err(AdminError::Broker(format!(
                "GET user {name}: {other} {text}"
            ))),
        }
    }

    /// Creates user `agent` with `password` and the permissions of an agent of `namespace`;
    /// a failure after the user exists deletes it again, so nothing is left half made.
    pub async fn create_agent_user(
        &self,
        namespace: &str,
        agent: &str,
        password: &str,
    ) -> Result<(), AdminError> {
        let (status, text) = self
            .send(
                reqwest::Method::PUT,
                &["users", agent],
                Some(json!({"password": password, "tags": ""})),
            )
            .await?;
        if !status.is_success() {
            return Err(AdminError::Broker(format!(
                "creating user {agent}: {status} {text}"
            )));
        }
        let exchange = regex_escape(namespace);
        let queue = regex_escape(&format!("{namespace}.agent.{agent}"));
        let permissions = json!({
            "configure": format!("^({exchange}|{queue})$"),
            "write": format!("^({exchange}|{queue}|amq\\.default)$"),
            "read": format!("^({exchange}|{queue})$"),
        });
        let granted = self
            .send(
                reqwest::Method::PUT,
                &["permissions", &self.vhost, agent],
                Some(permissions),
            )
            .await;
        let granted = match granted {
            Ok((status, _)) if status.is_success() => {
                // Topic permissions: on the namespace's exchange the agent publishes only
                // results, heartbeats, output and processor results, and binds only its
                // own routing key.
                let topics = json!({
                    "exchange": namespace,
                    "write": "^(center\\.(result|heartbeat|output)|processor\\..+)$",
                    "read": format!("^agent\\.{}$", regex_escape(agent)),
                });
                self.send(
                    reqwest::Method::PUT,
                    &["topic-permissions", &self.vhost, agent],
                    Some(topics),
                )
                .await
            }
            other => other,
        };
        match granted {
            Ok((status, _)) if status.is_success() => Ok(()),
            outcome => {
                let why = match outcome {
                    Ok((status, text)) => format!("{status} {text}"),
                    Err(err) => err.to_string(),
                };
                let _ = self.delete_user(agent).await;
                Err(AdminError::Broker(format!(
                    "setting the permissions of {agent} on vhost {}: {why}",
                    self.vhost
                )))
            }
        }
    }

    /// Deletes user `agent` (RabbitMQ closes its connections with it) and closes whatever
    /// connection of it the broker still lists. False when there was no such user.
    pub async fn delete_user(&self, agent: &str) -> Result<bool, AdminError> {
        let (status, text) = self
            .send(reqwest::Method::DELETE, &["users", agent], None)
            .await?;
        let existed = match status {
            StatusCode::NOT_FOUND => false,
            status if status.is_success() => true,
            other => {
                return Err(AdminError::Broker(format!(
                    "deleting user {agent}: {other} {text}"
                )))
            }
        };
        self.close_connections_of(agent).await?;
        Ok(existed)
    }

    /// Closes every connection the broker lists for `user`.
    async fn close_connections_of(&self, user: &str) -> Result<(), AdminError> {
        let (status, text) = self
            .send(reqwest::Method::GET, &["connections"], None)
            .await?;
        if !status.is_success() {
            return Err(AdminError::Broker(format!(
                "listing connections: {status} {text}"
            )));
        }
        let connections: Vec<serde_json::Value> = serde_json::from_str(&text)
            .map_err(|err| AdminError::Broker(format!("listing connections: {err}")))?;
        for connection in connections {
            if connection["user"].as_str() != Some(user) {
                continue;
            }
            let Some(name) = connection["name"].as_str() else {
                continue;
            };
            // Gone already (the user's deletion closed it) is as good as closed.
            let _ = self
                .send(reqwest::Method::DELETE, &["connections", name], None)
                .await?;
        }
        Ok(())
    }
}

/// The vhost an `amqp://` URL names: its path without the leading `/`, percent-decoded;
/// RabbitMQ's default `/` when it has none.
fn vhost_of(bus_url: &str) -> Result<String, AdminError> {
    // A cluster's addresses share one vhost: the first names it.
    let first = elves_shared::bus::broker_urls(bus_url)
        .first()
        .copied()
        .unwrap_or(bus_url);
    let url = url::Url::parse(first)
        .map_err(|err| AdminError::BadUrl(format!("needs an amqp:// bus.url: {err}")))?;
    let path = url.path().strip_prefix('/').unwrap_or(url.path());
    if path.is_empty() {
        return Ok("/".to_string());
    }
    percent_decode(path)
        .ok_or_else(|| AdminError::BadUrl(format!("bus.url has a vhost that is not UTF-8: {path}")))
}

/// `text` as a regular expression matching exactly itself.
fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if "\\.+*?()|[]{}^$-".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_into_exact_patterns() {
        assert_eq!(regex_escape("elves-t.1"), "elves\\-t\\.1");
        assert_eq!(regex_escape("a:b_c"), "a:b_c");
    }

    #[test]
    fn the_management_url_is_checked() {
        let bus = "amqp://guest:guest@127.0.0.1:5672/%2f";
        for (url, says) in [
            ("", "enrolling is off"),
            ("ftp://a:b@host", "http:// or https://"),
            ("http://host:15672", "names no user"),
            ("not a url", "does not parse"),
        ] {
            let err = BrokerAdmin::new(url, bus).err().unwrap().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
        let admin = BrokerAdmin::new("http://ad%40min:p%3Aw@127.0.0.1:15672/", bus).unwrap();
        assert_eq!(
            (admin.user.as_str(), admin.password.as_str()),
            ("ad@min", "p:w")
        );
        assert_eq!(admin.vhost, "/");
        let other = BrokerAdmin::new("http://a:b@h:1", "amqp://u:p@h:5672/team%2Fa").unwrap();
        assert_eq!(other.vhost, "team/a");
        let plain = BrokerAdmin::new("http://a:b@h:1", "amqp://u:p@h:5672").unwrap();
        let cluster =
            BrokerAdmin::new("http://a:b@h:1", "amqp://u:p@n1/v1,amqp://u:p@n2/v1").unwrap();
        assert_eq!(cluster.vhost, "v1");
        assert_eq!(plain.vhost, "/");
        assert_eq!(
            admin
                .endpoint(&["permissions", "/", "a1"])
                .unwrap()
                .as_str(),
            "http://127.0.0.1:15672/api/permissions/%2F/a1"
        );
    }
}
