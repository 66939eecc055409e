//! A real headless browser for the dashboard tests: Debian's `chromium` driven through
//! `chromedriver` over the W3C WebDriver protocol (plain JSON over HTTP, spoken here with
//! reqwest). Both must be installed (`apt-get install chromium chromium-driver`, which
//! `scripts/services.sh` does when they are missing); a test fails loudly without them.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    /// Where screenshots go: `target/ui-screenshots/`.
    shots: PathBuf,
    /// The browser's profile, removed after it.
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn find_binary(names: &[&str]) -> String {
    for name in names {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
            let path = Path::new(dir).join(name);
            if path.exists() {
                return path.display().to_string();
            }
        }
    }
    panic!(
        "none of {names:?} is installed: the dashboard tests need Debian's chromium and \
         chromium-driver (apt-get install -y chromium chromium-driver; scripts/services.sh \
         installs them)"
    )
}

impl Browser {
    /// Starts chromedriver and a headless chromium session with a laptop-sized window.
    pub async fn start() -> Browser {
        let driver_binary = find_binary(&["chromedriver"]);
        let chromium = find_binary(&["chromium", "chromium-browser"]);
        let port = free_port();
        let driver = Command::new(driver_binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        crate::harness::wait_until("chromedriver answers", Duration::from_secs(20), || {
            let http = http.clone();
            let url = format!("{base}/status");
            async move {
                match http.get(url).send().await {
                    Ok(answer) => answer
                        .json::<Value>()
                        .await
                        .is_ok_and(|status| status["value"]["ready"] == true),
                    Err(_) => false,
                }
            }
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {answer}"))
            .to_string();
        let shots = crate::harness::repo_root().join("target/ui-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            driver,
            base,
            session,
            http,
            shots,
            _profile: profile,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let request = self.http.request(method, url);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        if let Some(error) = answer["value"]["error"].as_str() {
            panic!("WebDriver {path}: {error}: {}", answer["value"]["message"]);
        }
        answer["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.command(reqwest::Method::GET, path, None).await
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    pub async fn current_url(&self) -> String {
        self.get("/url")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Every element matching `css`, as WebDriver element ids.
    pub async fn find_all(&self, css: &str) -> Vec<String> {
        let found = self
            .post("/elements", json!({"using": "css selector", "value": css}))
            .await;
        found
            .as_array()
            .unwrap_or_else(|| panic!("finding {css:?}: {found}"))
            .iter()
            .map(|element| {
                // `{"element-6066-…": id}`: the one value is the reference.
                let reference = element
                    .as_object()
                    .and_then(|object| object.values().next());
                reference
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("not an element reference: {element}"))
                    .to_string()
            })
            .collect()
    }

    /// The one element matching `css` (fails the test when there is none).
    pub async fn find(&self, css: &str) -> String {
        let found = self.find_all(css).await;
        if found.is_empty() {
            let source = self.get("/source").await;
            panic!(
                "no element {css:?} on {}: {}",
                self.current_url().await,
                source.as_str().unwrap_or_default()
            );
        }
        found[0].clone()
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/click"), json!({}))
            .await;
    }

    /// Clicks `css` (a link or a submit button) and waits until the next page has loaded: the
    /// current document is marked first, so that the old page still showing cannot pass for
    /// the new one.
    pub async fn click_and_load(&self, css: &str) {
        self.execute("document.documentElement.dataset.stale = '1';", json!([]))
            .await;
        self.click(css).await;
        self.wait_for_new_page().await;
    }

    /// Waits until a page without the mark [`Browser::click_and_load`] sets has loaded.
    pub async fn wait_for_new_page(&self) {
        crate::harness::wait_until("the next page", Duration::from_secs(20), || async {
            let loaded = self
                .execute(
                    "return document.readyState === 'complete' \
                     && !document.documentElement.dataset.stale;",
                    json!([]),
                )
                .await;
            loaded == Value::Bool(true)
        })
        .await;
    }

    /// Clears the field `css` and types `text` into it.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/clear"), json!({}))
            .await;
        self.post(
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Chooses the local file `path` in the file input `css` (what a user picking it does).
    pub async fn choose_file(&self, css: &str, path: &Path) {
        let element = self.find(css).await;
        self.post(
            &format!("/element/{element}/value"),
            json!({ "text": path.display().to_string() }),
        )
        .await;
    }

    pub async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        self.get(&format!("/element/{element}/text"))
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The visible text of the whole page.
    pub async fn page_text(&self) -> String {
        self.text("body").await
    }

    pub async fn attribute(&self, css: &str, name: &str) -> String {
        let element = self.find(css).await;
        self.get(&format!("/element/{element}/attribute/{name}"))
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn cookies(&self) -> Vec<Value> {
        self.get("/cookie")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Runs `script` in the page (a test forging what a page would not offer).
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({ "width": width, "height": height }))
            .await;
    }

    /// Saves a PNG of the viewport as `target/ui-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let data = self.get("/screenshot").await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// Ends the session and chromedriver.
    pub async fn close(mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(url).send().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A failed test still ends chromedriver (its browser goes with it).
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
