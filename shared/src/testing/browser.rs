//! A real browser for the tests: headless Chromium, driven over the W3C
//! WebDriver protocol through `chromedriver`.
//!
//! WebDriver is a small JSON-over-HTTP protocol (open a session, go to a
//! URL, find an element, click it, read its text, take a screenshot), so
//! this client is a few `reqwest` calls rather than another dependency
//! (`fantoccini` and `thirtyfour` do the same, with more). Both programs
//! come from Debian (`apt-get install chromium chromium-driver`; a browser
//! fetched from anywhere else would not match its driver).
//!
//! Every wait has a deadline; a missing browser fails the test with what
//! to install.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// How long a page may take to show what a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Chromium's narrowest window, in CSS pixels.
const MIN_WINDOW: u32 = 500;

/// The W3C name of a web element's id in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One headless Chromium, with its driver. Dropping it kills both.
#[derive(Debug)]
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
    _driver: Child,
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    names.iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
    })
}

impl Browser {
    /// A browser window `width` pixels wide (390: a phone).
    pub async fn start(width: u32) -> Self {
        let driver_path = find_program(&["chromedriver"]).unwrap_or_else(|| {
            panic!("`chromedriver` was not found on PATH. Install it (Debian/Ubuntu: `apt-get install chromium chromium-driver`)")
        });
        let chromium = find_program(&["chromium", "chromium-browser"]).unwrap_or_else(|| {
            panic!("`chromium` was not found on PATH. Install it (Debian/Ubuntu: `apt-get install chromium chromium-driver`)")
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not answer on {base} within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // --no-sandbox: the tests may run as root, where Chromium's
        // sandbox refuses to start. The pages are our own.
        let mut options = json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--hide-scrollbars",
                     format!("--window-size={},900", width.max(MIN_WINDOW))],
        });
        // A window cannot be narrower than Chromium's minimum: a phone's
        // width is emulated (viewport, touch, a phone's user agent).
        if width < MIN_WINDOW {
            options["mobileEmulation"] =
                json!({"deviceMetrics": {"width": width, "height": 844, "pixelRatio": 1}});
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("a session")
            .json()
            .await
            .expect("JSON");
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {answer}"));
        Self {
            http,
            session: format!("{base}/session/{id}"),
            _driver: driver,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("JSON from chromedriver");
        if let Some(error) = answer["value"]["error"].as_str() {
            panic!("WebDriver {path}: {error}: {}", answer["value"]["message"]);
        }
        answer["value"].clone()
    }

    /// Loads `url` and waits for it.
    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` (a function body; `arguments[0]`… are `args`) in the
    /// page and returns what it returns.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Waits until `script` returns true in the page, up to [`PATIENCE`];
    /// returns whether it did.
    pub async fn wait_for(&self, script: &str) -> bool {
        self.wait_for_within(script, PATIENCE).await
    }

    /// [`Browser::wait_for`] with a deadline of its own, for a page doing
    /// many things in a row.
    pub async fn wait_for_within(&self, script: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.run(script, json!([])).await == Value::Bool(true) {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    /// Clicks the first element matching `css`, as a user would.
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Types `text` into the element matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Presses keys on whatever has the focus (`"\u{E004}"` is Tab,
    /// `"\u{E007}"` Enter: the WebDriver key codes).
    pub async fn press(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|key| {
                let key = key.to_string();
                [
                    json!({"type": "keyDown", "value": key}),
                    json!({"type": "keyUp", "value": key}),
                ]
            })
            .collect();
        self.call(
            reqwest::Method::POST,
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        )
        .await;
    }

    /// The visible text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let id = self.element(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Sets a cookie on the page's site (the page must be loaded).
    pub async fn set_cookie(&self, name: &str, value: &str) {
        self.call(
            reqwest::Method::POST,
            "/cookie",
            Some(json!({"cookie": {"name": name, "value": value, "path": "/"}})),
        )
        .await;
    }

    /// A cookie's value, if the browser holds it.
    pub async fn cookie(&self, name: &str) -> Option<String> {
        let all = self.call(reqwest::Method::GET, "/cookie", None).await;
        all.as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["value"].as_str())
            .map(str::to_owned)
    }

    /// What the page logged as errors (uncaught exceptions, failed loads,
    /// `console.error`) since the last call.
    ///
    /// Chromium also logs every API answer that is not a 2xx ("Failed to
    /// load resource: … 401") even when the page expects and handles it
    /// (`GET /api/me` is 401 when nobody is logged in; a 422 names a bad
    /// field). Those, on `/api/` paths, are left out: the tests check the
    /// answers themselves. A page asset or icon that fails still counts.
    pub async fn console_errors(&self) -> Vec<String> {
        let logs = self
            .call(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({"type": "browser"})),
            )
            .await;
        logs.as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .filter(|message| !is_handled_api_answer(message))
            .collect()
    }

    /// A PNG of the window, saved to `path` (folders made as needed).
    pub async fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("a base64 PNG");
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).expect("the screenshot folder");
        }
        std::fs::write(path, bytes).expect("the screenshot is written");
    }

    /// Ends the session (the browser closes; the driver goes on drop).
    pub async fn quit(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

/// A script for [`Browser::wait_for`]: the element matching `css` has
/// `text` in it (the shop page's `#notices`, say).
pub fn text_in(css: &str, text: &str) -> String {
    format!(
        "const e = document.querySelector({css:?}); return e !== null && e.textContent.includes({text:?})"
    )
}

/// `http://host/api/… - Failed to load resource: the server responded
/// with a status of 4xx/5xx`: an API answer the page handles.
fn is_handled_api_answer(message: &str) -> bool {
    let Some((url, rest)) = message.split_once(" - ") else {
        return false;
    };
    let path = url.splitn(4, '/').nth(3).unwrap_or_default();
    path.starts_with("api/") && rest.contains("the server responded with a status of")
}

/// Where a test's screenshot goes: `docs/screenshots/NAME.png` when
/// `UPDATE_SCREENSHOTS` is set (`scripts/screenshots`), else a temporary
/// folder, so that a test run does not change the checkout.
pub fn screenshot_path(name: &str) -> PathBuf {
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs/screenshots")
            .join(format!("{name}.png"))
    } else {
        std::env::temp_dir()
            .join("myclothes-screenshots")
            .join(format!("{name}.png"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_handled_api_answers_are_left_out_of_console_errors() {
        let api = "http://127.0.0.1:4000/api/me - Failed to load resource: the server responded with a status of 401 (Unauthorized)";
        let icon = "http://127.0.0.1:4000/favicon.ico - Failed to load resource: the server responded with a status of 404 (Not Found)";
        let script = "http://127.0.0.1:4000/ 12:7 Uncaught TypeError: x is undefined";
        assert!(is_handled_api_answer(api));
        assert!(!is_handled_api_answer(icon));
        assert!(!is_handled_api_answer(script));
    }
}
