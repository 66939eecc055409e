//! API request signing (SPEC §5, §11 "Signing"), used by the center to verify and by clients to sign.
//!
//! The sign string is `path + "?" + pairs`: every parameter except `sign` and `sign_type`,
//! as `key=value` with unencoded values, sorted by key then value (byte order), joined by `&`.
//! MD5 signs `sign_string + auth_key`; HMAC-SHA256 keys the same string with `auth_key`.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignType {
    Md5,
    HmacSha256,
}

impl SignType {
    /// Matched case-insensitively, as clients of the original API were inconsistent.
    pub fn parse(text: &str) -> Option<SignType> {
        if text.eq_ignore_ascii_case("md5") {
            Some(SignType::Md5)
        } else if text.eq_ignore_ascii_case("hmac-sha256") {
            Some(SignType::HmacSha256)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SignType::Md5 => "MD5",
            SignType::HmacSha256 => "HMAC-SHA256",
        }
    }

    /// Length in hex characters of a sign of this type.
    pub fn hex_len(self) -> usize {
        match self {
            SignType::Md5 => 32,
            SignType::HmacSha256 => 64,
        }
    }
}

/// Builds the string that is signed. `params` may contain `sign` and `sign_type`; they are skipped.
pub fn sign_string<'a, I>(path: &str, params: I) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut pairs: Vec<(&str, &str)> = params
        .into_iter()
        .filter(|(key, _)| *key != "sign" && *key != "sign_type")
        .collect();
    pairs.sort_unstable();
    let joined = pairs
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join("&");
    format!("{path}?{joined}")
}

/// Lowercase hex sign of `sign_string` with `auth_key`.
pub fn compute(sign_type: SignType, sign_string: &str, auth_key: &str) -> String {
    match sign_type {
        SignType::Md5 => {
            let mut hasher = Md5::new();
            hasher.update(sign_string.as_bytes());
            hasher.update(auth_key.as_bytes());
            hex::encode(hasher.finalize())
        }
        SignType::HmacSha256 => {
            // HMAC accepts keys of any length, so this cannot fail.
            let mut mac = match Hmac::<Sha256>::new_from_slice(auth_key.as_bytes()) {
                Ok(mac) => mac,
                Err(_) => return String::new(),
            };
            mac.update(sign_string.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        }
    }
}

/// Compares a client's sign with the expected one in constant time, ignoring hex case.
pub fn matches(expected_lower_hex: &str, given: &str) -> bool {
    let given = given.to_ascii_lowercase();
    expected_lower_hex.len() == given.len()
        && bool::from(expected_lower_hex.as_bytes().ct_eq(given.as_bytes()))
}

/// Signs a parameter list for a client: returns the params with `sign_type` and `sign` appended.
pub fn sign_params(
    path: &str,
    mut params: Vec<(String, String)>,
    sign_type: SignType,
    auth_key: &str,
) -> Vec<(String, String)> {
    params.retain(|(key, _)| key != "sign" && key != "sign_type");
    let text = sign_string(path, params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let sign = compute(sign_type, &text, auth_key);
    params.push(("sign_type".to_string(), sign_type.as_str().to_string()));
    params.push(("sign".to_string(), sign));
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/api/v2/rt/exec";

    fn params() -> Vec<(&'static str, &'static str)> {
        vec![
            ("timestamp", "1700000000"),
            ("app", "apptest"),
            ("auth_id", "admin"),
            ("sign_type", "MD5"),
            ("sign", "ignored"),
            ("param", "{\"my\":\"a b\"}"),
            ("ip", "127.0.0.1"),
            ("func", "helloword"),
            ("proxy", ""),
        ]
    }

    #[test]
    fn sign_string_sorts_and_skips_sign_fields() {
        assert_eq!(
            sign_string(PATH, params()),
            "/api/v2/rt/exec?app=apptest&auth_id=admin&func=helloword&ip=127.0.0.1\
             &param={\"my\":\"a b\"}&proxy=&timestamp=1700000000"
        );
    }

    #[test]
    fn equal_keys_sort_by_value() {
        assert_eq!(sign_string("/p", [("k", "b"), ("k", "a")]), "/p?k=a&k=b");
    }

    /// Known answers computed independently with coreutils/openssl:
    /// `printf '%s' "$S$KEY" | md5sum` and `printf '%s' "$S" | openssl dgst -sha256 -hmac "$KEY"`.
    #[test]
    fn known_answer_vectors() {
        let text = sign_string(PATH, params());
        assert_eq!(
            compute(SignType::Md5, &text, "secret"),
            "5048781daeb166dc814e81ea47d5fcb8"
        );
        assert_eq!(
            compute(SignType::HmacSha256, &text, "secret"),
            "3f9afcde574b5d1a6912fcb38b9958b11a9507a3b87c40c759b7987290719514"
        );
    }

    #[test]
    fn matching_ignores_hex_case_and_checks_length() {
        let sign = compute(SignType::Md5, "x", "k");
        assert!(matches(&sign, &sign.to_uppercase()));
        assert!(!matches(&sign, &sign[..31]));
        assert!(!matches(&sign, "0".repeat(32).as_str()));
    }

    #[test]
    fn sign_type_is_case_insensitive() {
        assert_eq!(SignType::parse("md5"), Some(SignType::Md5));
        assert_eq!(SignType::parse("Hmac-Sha256"), Some(SignType::HmacSha256));
        assert_eq!(SignType::parse("sha1"), None);
    }
}
