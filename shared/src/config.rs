//! Loading TOML configuration with `ELVES_…` environment overrides, shared by center and agent.
//!
//! Every key can be overridden by an environment variable: `ELVES_<SECTION>__<KEY>` (double
//! underscore between levels, case-insensitive), e.g. `ELVES_BUS__URL=amqp://…` sets `bus.url`,
//! and `ELVES_<KEY>` sets a top-level key, e.g. `ELVES_DATA_DIR`.
//! The value is parsed as TOML when it can be (numbers, booleans), else taken as a string.
//! What the keys mean is up to the caller's serde type; errors name the offending key.
//!
//! The `ELVES_` names are shared with the `elves` client (`ELVES_URL`, `ELVES_AUTH_ID`,
//! `ELVES_AUTH_KEY`: [`CLIENT_VARIABLES`]), with the worker's environment (`ELVES_TASK_ID`, …)
//! and with test switches, all of which one shell may export before it starts a service. So
//! that they never collide, a service reads only its own names:
//! - a name with `__` is always an override of a section's key, and an unknown one is an error
//!   (it can only be a typo: no other user of `ELVES_` puts `__` in a name);
//! - a name without `__` is an override only when it names a top-level key that the service's
//!   configuration type declares (read from its `Deserialize` impl); any other such name belongs
//!   to someone else and is ignored. A service therefore never adds a top-level key named like
//!   a client variable (each configuration's tests check that against [`CLIENT_VARIABLES`]).

use serde::de::{DeserializeOwned, Visitor};
use std::path::Path;

/// The variables the `elves` client reads (`elves call`, `elves app`, `elves cron`); no service
/// takes them as configuration.
pub const CLIENT_VARIABLES: &[&str] = &[CLIENT_URL, CLIENT_AUTH_ID, CLIENT_AUTH_KEY];
/// The center's URL for the `elves` client.
pub const CLIENT_URL: &str = "ELVES_URL";
/// The auth id the `elves` client signs with.
pub const CLIENT_AUTH_ID: &str = "ELVES_AUTH_ID";
/// The key the `elves` client signs with.
pub const CLIENT_AUTH_KEY: &str = "ELVES_AUTH_KEY";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
}

/// Reads `path` (or starts from an empty table when `path` is `None`), applies the environment
/// overrides of `env` (pass `std::env::vars()`), and deserializes into `T`.
pub fn load<T, I>(path: Option<&Path>, env: I) -> Result<T, ConfigError>
where
    T: DeserializeOwned,
    I: IntoIterator<Item = (String, String)>,
{
    let origin = path
        .map(|path| path.display().to_string())
        .unwrap_or_else(|| "<defaults>".to_string());
    let mut table = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: origin.clone(),
                source,
            })?;
            text.parse::<toml::Table>()
                .map_err(|err| ConfigError::Parse {
                    path: origin.clone(),
                    message: err.to_string(),
                })?
        }
        None => toml::Table::new(),
    };
    let own_top_level_keys = top_level_keys::<T>();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("ELVES_") else {
            continue;
        };
        // Variables that are not configuration (test and benchmark switches) are ignored: a
        // center started by a benchmark must not refuse `ELVES_BENCH_CALLS` as an unknown key.
        if rest.starts_with("TEST_") || rest.starts_with("BENCH_") || rest.is_empty() {
            continue;
        }
        let keys: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if let ([key], Some(own)) = (keys.as_slice(), own_top_level_keys) {
            if !own.contains(&key.as_str()) {
                log::debug!("config: ignoring {name}: not a key of this configuration");
                continue;
            }
        }
        set_path(&mut table, &keys, parse_value(&value)).map_err(|message| ConfigError::Env {
            name: name.clone(),
            message,
        })?;
    }
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|err| {
        let key = err.path().to_string();
        let message = err.into_inner().message().to_string();
        ConfigError::Parse {
            path: origin,
            message: if key == "." {
                message
            } else {
                format!("key `{key}`: {message}")
            },
        }
    })
}

/// The top-level keys `T` declares, as its `Deserialize` impl hands them to the deserializer;
/// `None` when `T` is not a plain struct (a map, a struct with flattened fields): then every
/// top-level name is taken as its key, and `T` decides.
fn top_level_keys<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    let mut keys = None;
    // The deserializer only records the keys and fails: there is nothing to deserialize.
    let _ = T::deserialize(KeysOf(&mut keys));
    keys
}

/// A deserializer that records the fields of the struct asked of it, then fails.
struct KeysOf<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> serde::Deserializer<'de> for KeysOf<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(serde::de::Error::custom("keys recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

fn parse_value(text: &str) -> toml::Value {
    let wrapped = format!("v = {text}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut table) => table
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.to_string())),
        Err(_) => toml::Value::String(text.to_string()),
    }
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    match keys {
        [] => Err("empty key".to_string()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => set_path(inner, rest, value),
                _ => Err(format!("`{first}` is not a section")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    struct Sample {
        id: String,
        #[serde(default)]
        bus: Bus,
    }

    #[derive(Deserialize, Debug, Default)]
    struct Bus {
        #[serde(default)]
        url: String,
        #[serde(default)]
        prefetch: u16,
    }

    #[test]
    fn environment_overrides_nested_keys_and_types() {
        let env = vec![
            ("ELVES_ID".to_string(), "a1".to_string()),
            ("ELVES_BUS__URL".to_string(), "amqp://x".to_string()),
            ("ELVES_BUS__PREFETCH".to_string(), "8".to_string()),
            ("ELVES_TEST_AMQP_URL".to_string(), "ignored".to_string()),
            ("ELVES_BENCH_CALLS".to_string(), "ignored".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let sample: Sample = load(None, env).unwrap();
        assert_eq!(sample.id, "a1");
        assert_eq!(sample.bus.url, "amqp://x");
        assert_eq!(sample.bus.prefetch, 8);
    }

    #[test]
    fn a_missing_required_key_is_named() {
        let err = load::<Sample, _>(None, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("id"), "{err}");
    }

    #[test]
    fn a_bad_type_is_an_error() {
        let env = vec![
            ("ELVES_ID".to_string(), "a".to_string()),
            ("ELVES_BUS__PREFETCH".to_string(), "many".to_string()),
        ];
        let err = load::<Sample, _>(None, env).unwrap_err();
        assert!(err.to_string().contains("prefetch"), "{err}");
    }

    /// Like a service's configuration: unknown keys are refused at every level.
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        id: String,
        #[serde(default)]
        bus: StrictBus,
    }

    #[derive(Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields)]
    struct StrictBus {
        #[serde(default)]
        url: String,
    }

    fn strict_env(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        [("ELVES_ID", "a1"), ("ELVES_BUS__URL", "amqp://x")]
            .iter()
            .chain(extra)
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn client_and_worker_variables_are_not_configuration() {
        let mut env = strict_env(&[("ELVES_TASK_ID", "00000000000000a1")]);
        for name in CLIENT_VARIABLES {
            env.push((name.to_string(), "http://127.0.0.1:8080".to_string()));
        }
        let strict: Strict = load(None, env).unwrap();
        assert_eq!(strict.id, "a1");
        assert_eq!(strict.bus.url, "amqp://x");
    }

    #[test]
    fn an_unknown_section_key_is_still_an_error() {
        let err =
            load::<Strict, _>(None, strict_env(&[("ELVES_BUS__URLL", "amqp://y")])).unwrap_err();
        assert!(err.to_string().contains("urll"), "{err}");
        let err = load::<Strict, _>(None, strict_env(&[("ELVES_AUTH__ID", "x")])).unwrap_err();
        assert!(err.to_string().contains("auth"), "{err}");
    }

    #[test]
    fn top_level_keys_come_from_the_type() {
        assert_eq!(top_level_keys::<Strict>(), Some(&["id", "bus"][..]));
        // A map declares no keys: every top-level name is taken, and the map keeps it.
        assert_eq!(top_level_keys::<toml::Table>(), None);
        let table: toml::Table = load(None, strict_env(&[("ELVES_URL", "u")])).unwrap();
        assert_eq!(table["url"].as_str(), Some("u"));
    }
}
