//! Who may ask, and whom ipstats tells: the bearer token, the Host names
//! answered, and the alert receivers' URLs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{ConfigError, invalid};

/// A value that must not reach logs: `Debug` shows that it is set, not what it is.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The shortest token accepted: shorter ones are guessable.
const MIN_TOKEN_LEN: usize = 16;

pub(super) fn read_token(path: &Path) -> Result<Secret, ConfigError> {
    const SETTING: &str = "--auth-token-file";
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(SETTING, format!("cannot read {}: {e}", path.display())))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            SETTING,
            format!(
                "{} must hold one token of at least {MIN_TOKEN_LEN} characters without spaces",
                path.display()
            ),
        ));
    }
    Ok(Secret(token.to_string()))
}

/// `--allowed-hosts`, or its default for `listen`.
pub(super) fn allowed_hosts(
    list: Option<&str>,
    listen: SocketAddr,
) -> Result<Option<Vec<String>>, ConfigError> {
    match list.map(str::trim) {
        None if listen.ip().is_loopback() => Ok(Some(
            ["localhost", "127.0.0.1", "[::1]"]
                .map(String::from)
                .to_vec(),
        )),
        None | Some("*") => Ok(None),
        Some(list) => {
            let hosts: Vec<String> = list.split(',').map(|h| h.trim().to_string()).collect();
            if let Some(bad) = hosts
                .iter()
                .find(|h| h.is_empty() || h.contains(|c: char| c == '/' || c.is_whitespace()))
            {
                return Err(invalid(
                    "--allowed-hosts",
                    format!("{bad:?} is not a host name (give names without port, or *)"),
                ));
            }
            Ok(Some(hosts))
        }
    }
}

/// `--alert-webhook` / `--alertmanager`: an http(s) URL, and only with
/// `--rules` (without rules there is nothing to send).
pub(super) fn alert_url(
    setting: &'static str,
    text: Option<&str>,
    rules: &Option<PathBuf>,
) -> Result<Option<url::Url>, ConfigError> {
    let Some(text) = text else {
        return Ok(None);
    };
    if rules.is_none() {
        return Err(invalid(
            setting,
            "needs --rules: without rules there is nothing to send",
        ));
    }
    let url = url::Url::parse(text)
        .map_err(|e| invalid(setting, format!("{text:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            setting,
            format!("{text:?} must be an http:// or https:// URL with a host"),
        ));
    }
    Ok(Some(url))
}

/// `--bouncer-keys-file`: one API key per line (16 characters or more, no
/// spaces); blank lines and `#` comments are skipped; at least one key.
pub(super) fn read_bouncer_keys(path: &Path) -> Result<Vec<Secret>, ConfigError> {
    const SETTING: &str = "--bouncer-keys-file";
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(SETTING, format!("cannot read {}: {e}", path.display())))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let key = line.trim();
        if key.is_empty() || key.starts_with('#') {
            continue;
        }
        if key.len() < MIN_TOKEN_LEN || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                SETTING,
                format!(
                    "{} line {}: a key is one word of at least {MIN_TOKEN_LEN} characters",
                    path.display(),
                    n + 1
                ),
            ));
        }
        keys.push(Secret(key.to_string()));
    }
    if keys.is_empty() {
        return Err(invalid(
            SETTING,
            format!("{} holds no key (one per line)", path.display()),
        ));
    }
    Ok(keys)
}
