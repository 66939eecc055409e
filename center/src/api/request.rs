//! A v2 request's parameters (query string and form body, GET or POST alike), its signature
//! check, and the validation of the common parameters in the order of the error-code table.

use crate::config::AuthConfig;
use crate::error::ApiError;
use elves_shared::names::is_valid_name;
use elves_shared::sign::{self, SignType};
use elves_shared::wire::{AgentId, Mode, TaskId};
use std::collections::HashMap;

/// Parameters in arrival order; duplicates are kept because they are all signed.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Collects the query string and, for form posts, the body.
    pub fn from_request(query: &str, body: &[u8], is_form: bool) -> Self {
        let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if is_form {
            pairs.extend(
                url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())),
            );
        }
        Params { pairs }
    }

    /// Parameters that did not come over HTTP (a bus submission).
    pub fn from_owned(pairs: Vec<(String, String)>) -> Self {
        Params { pairs }
    }

    #[cfg(test)]
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Params {
            pairs: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn get_or_empty(&self, key: &str) -> &str {
        self.get(key).unwrap_or("")
    }

    pub fn required(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|value| !value.is_empty())
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Who made a verified call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub auth_id: String,
}

/// Checks the signature of a request to `path` (SPEC §11 "Signing"), 401.x codes in table order,
/// against the single auth id of the configuration (simple mode).
pub fn authenticate(
    auth: &AuthConfig,
    path: &str,
    params: &Params,
    now_unix_s: i64,
) -> Result<Caller, ApiError> {
    let auth_keys: HashMap<&str, &str> = [(auth.auth_id.as_str(), auth.auth_key.as_str())].into();
    authenticate_with(
        |auth_id| auth_keys.get(auth_id).map(|key| key.to_string()),
        auth.timestamp_window_s,
        path,
        params,
        now_unix_s,
    )
}

/// Like [`authenticate`], with the auth key of an auth id given by `key_of` (`None`: unknown
/// or revoked, 401.2). Supervisor mode looks keys up in the AppStore's registry.
pub fn authenticate_with(
    key_of: impl Fn(&str) -> Option<String>,
    timestamp_window_s: i64,
    path: &str,
    params: &Params,
    now_unix_s: i64,
) -> Result<Caller, ApiError> {
    for key in ["auth_id", "timestamp", "sign_type", "sign"] {
        if params.required(key).is_none() {
            return Err(ApiError::MissingSignParams(key.to_string()));
        }
    }
    let auth_id = params.get_or_empty("auth_id");
    let Some(auth_key) = key_of(auth_id) else {
        return Err(ApiError::UnknownAuthId(auth_id.to_string()));
    };
    let auth_key = auth_key.as_str();
    let sign_type_text = params.get_or_empty("sign_type");
    let sign_type = SignType::parse(sign_type_text)
        .ok_or_else(|| ApiError::BadSignType(sign_type_text.to_string()))?;
    let given_sign = params.get_or_empty("sign");
    if given_sign.len() != sign_type.hex_len() {
        return Err(ApiError::BadSignLength);
    }
    let timestamp_text = params.get_or_empty("timestamp");
    let timestamp: i64 = timestamp_text
        .parse()
        .map_err(|_| ApiError::TimestampNotNumber(timestamp_text.to_string()))?;
    let skew = timestamp.saturating_sub(now_unix_s);
    if skew.abs() > timestamp_window_s {
        return Err(ApiError::TimestampOutOfWindow(skew));
    }
    let expected = sign::compute(sign_type, &sign::sign_string(path, params.iter()), auth_key);
    if !sign::matches(&expected, given_sign) {
        return Err(ApiError::SignMismatch);
    }
    Ok(Caller {
        auth_id: auth_id.to_string(),
    })
}

pub fn agent_address(params: &Params) -> Result<String, ApiError> {
    let ip = params
        .required("ip")
        .ok_or_else(|| ApiError::BadIp("missing ip".to_string()))?;
    // An agent is addressed by its ip or its id; both must be safe to put in a routing key.
    if AgentId::parse(ip).is_err() {
        return Err(ApiError::BadIp(format!("bad ip {ip:?}")));
    }
    Ok(ip.to_string())
}

/// `param` is any JSON text or empty, passed on byte-exact, of at most
/// [`MAX_PARAM_BYTES`](elves_shared::wire::MAX_PARAM_BYTES) bytes (the worker could not be
/// started with a larger one).
pub fn json_param(params: &Params) -> Result<String, ApiError> {
    let param = params.get_or_empty("param");
    let limit = elves_shared::wire::MAX_PARAM_BYTES;
    if param.len() > limit {
        return Err(ApiError::BadParam(format!(
            "param is {} bytes, over the limit of {limit} bytes (a worker gets it as one \
             command-line argument); pass large data another way, such as a file or URL",
            param.len()
        )));
    }
    if !param.is_empty() {
        serde_json::from_str::<serde::de::IgnoredAny>(param)
            .map_err(|err| ApiError::BadParam(format!("param is not JSON: {err}")))?;
    }
    Ok(param.to_string())
}

pub fn app_name(params: &Params) -> Result<String, ApiError> {
    let app = params
        .required("app")
        .ok_or_else(|| ApiError::BadApp("missing app".to_string()))?;
    if !is_valid_name(app) {
        return Err(ApiError::BadApp(format!("bad app name {app:?}")));
    }
    Ok(app.to_string())
}

pub fn func_name(params: &Params) -> Result<String, ApiError> {
    let func = params
        .required("func")
        .ok_or_else(|| ApiError::BadFunc("missing func".to_string()))?;
    if !is_valid_name(func) {
        return Err(ApiError::BadFunc(format!("bad func name {func:?}")));
    }
    Ok(func.to_string())
}

/// A 16-hex id parameter; malformed → `bad` (403.6 for queue_id).
pub fn task_id(
    params: &Params,
    key: &str,
    bad: fn(String) -> ApiError,
) -> Result<TaskId, ApiError> {
    let text = params.get_or_empty(key);
    TaskId::parse(text).map_err(|_| {
        bad(format!(
            "{key} must be 16 lowercase hex characters, got {text:?}"
        ))
    })
}

pub fn mode(params: &Params) -> Result<Mode, ApiError> {
    params
        .get_or_empty("mode")
        .parse::<Mode>()
        .map_err(ApiError::BadMode)
}

/// Integer seconds; empty or 0 → the default; negative, fractional, non-numeric or over a day → 403.8.
pub fn timeout_s(params: &Params, default_s: u32) -> Result<u32, ApiError> {
    let text = params.get_or_empty("timeout");
    if text.is_empty() {
        return Ok(default_s);
    }
    let bad = || {
        ApiError::BadTimeout(format!(
            "timeout must be whole seconds 0..86400, got {text:?}"
        ))
    };
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match text.parse::<u32>() {
        Ok(0) => Ok(default_s),
        Ok(seconds) if seconds <= 86_400 => Ok(seconds),
        _ => Err(bad()),
    }
}

/// `proxy` is `interp|file` or `file`; the agent enforces the allow-list and containment,
/// the center only refuses what can never be valid.
pub fn proxy(params: &Params) -> Result<String, ApiError> {
    let proxy = params.get_or_empty("proxy");
    if proxy.len() > 256 || proxy.contains('\0') || proxy.matches('|').count() > 1 {
        return Err(ApiError::BadParam(format!("bad proxy {proxy:?}")));
    }
    Ok(proxy.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthMode;

    fn auth() -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Simple,
            auth_id: "admin".into(),
            auth_key: "secret-key".into(),
            timestamp_window_s: 180,
        }
    }

    fn signed(pairs: &[(&str, &str)], sign_type: SignType) -> Params {
        let pairs = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let signed = sign::sign_params("/p", pairs, sign_type, "secret-key");
        Params { pairs: signed }
    }

    #[test]
    fn both_sign_types_verify() {
        for sign_type in [SignType::Md5, SignType::HmacSha256] {
            let params = signed(
                &[("auth_id", "admin"), ("timestamp", "1000"), ("x", "y z")],
                sign_type,
            );
            assert!(authenticate(&auth(), "/p", &params, 1000).is_ok());
        }
    }

    #[test]
    fn each_auth_failure_has_its_code() {
        let good = signed(
            &[("auth_id", "admin"), ("timestamp", "1000")],
            SignType::Md5,
        );
        let code =
            |params: &Params, now| authenticate(&auth(), "/p", params, now).unwrap_err().code();
        assert_eq!(
            code(&Params::from_pairs(&[("auth_id", "admin")]), 1000),
            "401.1"
        );
        let mut unknown = good.clone();
        unknown.pairs[0].1 = "nobody".into();
        assert_eq!(code(&unknown, 1000), "401.2");
        let mut bad_type = good.clone();
        bad_type.pairs[2].1 = "SHA1".into();
        assert_eq!(code(&bad_type, 1000), "401.3");
        let mut short = good.clone();
        short.pairs[3].1 = "abc".into();
        assert_eq!(code(&short, 1000), "401.4");
        let mut tampered = good.clone();
        tampered.pairs.push(("extra".into(), "1".into()));
        assert_eq!(code(&tampered, 1000), "401.5");
        assert_eq!(code(&good, 1000 + 181), "401.7");
        let not_number = signed(
            &[("auth_id", "admin"), ("timestamp", "soon")],
            SignType::Md5,
        );
        assert_eq!(code(&not_number, 1000), "401.8");
    }

    #[test]
    fn timeout_rules() {
        let t = |text: &str| timeout_s(&Params::from_pairs(&[("timeout", text)]), 90);
        assert_eq!(t("").unwrap(), 90);
        assert_eq!(t("0").unwrap(), 90);
        assert_eq!(t("5").unwrap(), 5);
        assert_eq!(t("86400").unwrap(), 86_400);
        for bad in ["-1", "1.5", "abc", "86401", "99999999999"] {
            assert_eq!(t(bad).unwrap_err().code(), "403.8", "{bad}");
        }
    }

    #[test]
    fn param_must_be_json_or_empty() {
        assert!(json_param(&Params::from_pairs(&[("param", "")])).is_ok());
        let limit = elves_shared::wire::MAX_PARAM_BYTES;
        let string_of = |n_bytes: usize| format!("\"{}\"", "x".repeat(n_bytes - 2));
        let largest = string_of(limit);
        assert!(json_param(&Params::from_pairs(&[("param", &largest)])).is_ok());
        let too_large = string_of(limit + 1);
        let refused = json_param(&Params::from_pairs(&[("param", &too_large)])).unwrap_err();
        assert_eq!(refused.code(), "403.2");
        assert!(
            refused.to_string().contains("limit of 96000 bytes"),
            "{refused}"
        );
        assert!(json_param(&Params::from_pairs(&[("param", r#"{"a":"é\n"}"#)])).is_ok());
        assert_eq!(
            json_param(&Params::from_pairs(&[("param", "{oops")]))
                .unwrap_err()
                .code(),
            "403.2"
        );
    }
}
