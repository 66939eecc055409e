//! Where a P-mode result goes besides the center (SPEC §6): by default the bus, routing key
//! `processor.<app>`; or, when the app's `appcfg.json` names one, an HTTP endpoint that gets
//! the result POSTed as JSON:
//!
//! ```json
//! {"Processor": {"Url": "http://processor.example:8000/results", "Timeout": 5}}
//! ```
//!
//! Delivery is best effort either way: the center already has the result, and a processor
//! that is down must not hold up the agent. This module decides and posts; publishing on the
//! bus stays in `runtime.rs`.

use elves_shared::wire::JobResult;
use std::path::Path;
use std::time::Duration;

/// The longest an HTTP processor may take, whatever `Timeout` says.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the app's processor is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessorTarget {
    /// `processor.<app>` on the bus.
    Bus,
    Http {
        url: String,
        timeout: Duration,
    },
}

#[derive(serde::Deserialize)]
struct AppCfg {
    #[serde(rename = "Processor")]
    processor: Option<ProcessorCfg>,
}

#[derive(serde::Deserialize)]
struct ProcessorCfg {
    #[serde(rename = "Url", default)]
    url: String,
    #[serde(rename = "Timeout", default)]
    timeout: Option<f64>,
}

/// Reads `<app_dir>/appcfg.json`. No file, no `Processor.Url`, or a file that does not parse
/// (logged) means the bus.
pub fn target_of(app_dir: &Path) -> ProcessorTarget {
    let path = app_dir.join("appcfg.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return ProcessorTarget::Bus;
    };
    let config: AppCfg = match serde_json::from_str(&text) {
        Ok(config) => config,
        Err(err) => {
            log::warn!(
                "{}: not valid, using the bus processor: {err}",
                path.display()
            );
            return ProcessorTarget::Bus;
        }
    };
    match config.processor {
        Some(processor)
            if processor.url.starts_with("http://") || processor.url.starts_with("https://") =>
        {
            let timeout = processor
                .timeout
                .filter(|seconds| seconds.is_finite() && *seconds > 0.0)
                .map(Duration::from_secs_f64)
                .unwrap_or(DEFAULT_TIMEOUT)
                .min(MAX_TIMEOUT);
            ProcessorTarget::Http {
                url: processor.url,
                timeout,
            }
        }
        Some(processor) if !processor.url.is_empty() => {
            log::warn!(
                "{}: Processor.Url {:?} is not http(s), using the bus processor",
                path.display(),
                processor.url
            );
            ProcessorTarget::Bus
        }
        _ => ProcessorTarget::Bus,
    }
}

/// POSTs the result as JSON; an error says why it did not arrive (non-2xx included).
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
    result: &JobResult,
) -> Result<(), String> {
    let response = http
        .post(url)
        .timeout(timeout)
        .json(result)
        .send()
        .await
        .map_err(|err| err.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("http status {}", response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appcfg_names_an_http_processor_or_the_bus() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(target_of(dir.path()), ProcessorTarget::Bus);
        let write = |text: &str| std::fs::write(dir.path().join("appcfg.json"), text).unwrap();
        write(r#"{"Processor": {"Url": "http://127.0.0.1:9/r", "Timeout": 2}}"#);
        assert_eq!(
            target_of(dir.path()),
            ProcessorTarget::Http {
                url: "http://127.0.0.1:9/r".into(),
                timeout: Duration::from_secs(2)
            }
        );
        write(r#"{"Processor": {"Url": "http://h/r"}}"#);
        assert!(matches!(
            target_of(dir.path()),
            ProcessorTarget::Http { timeout, .. } if timeout == DEFAULT_TIMEOUT
        ));
        write(r#"{"Processor": {"Url": "ftp://h/r", "Timeout": 2}}"#);
        assert_eq!(target_of(dir.path()), ProcessorTarget::Bus);
        write(r#"{"Other": 1}"#);
        assert_eq!(target_of(dir.path()), ProcessorTarget::Bus);
        write("{not json");
        assert_eq!(target_of(dir.path()), ProcessorTarget::Bus);
    }
}
