//! Loading TOML configuration with `ELVES_…` environment overrides, shared by center and agent.
//!
//! Every key can be overridden by an environment variable: `ELVES_<SECTION>__<KEY>` (double
//! underscore between levels, case-insensitive), e.g. `ELVES_BUS__URL=amqp://…` sets `bus.url`.
//! The value is parsed as TOML when it can be (numbers, booleans), else taken as a string.
//! What the keys mean is up to the caller's serde type; errors name the offending key.

use serde::de::DeserializeOwned;
use std::path::Path;

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
}
