//! A small client of a running Ferrite's HTTP API, for what the simulator does over HTTP:
//! registering its devices ([`crate::provision`]) and writing line protocol
//! ([`crate::http`]). It knows the address, the API token and how the server words its
//! errors (`{"error": "..."}`, or InfluxDB's `{"code": ..., "message": "..."}` for writes).

use std::time::Duration;

use crate::SimError;

/// Where the HTTP API is and who calls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// `host:port` of the HTTP API.
    pub addr: String,
    /// API token (operator role or more). With it, live mode registers its devices before
    /// connecting them with their own tokens.
    pub token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".to_owned(),
            token: None,
        }
    }
}

/// A connection pool to the API with the caller's token.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

/// No request waits longer than this for its answer (a write waits for an fsync).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

impl Api {
    /// A client of `config`'s API keeping up to `pool` idle connections.
    pub(crate) fn new(config: &ApiConfig, pool: usize) -> Result<Self, SimError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(pool)
            .build()
            .map_err(|e| SimError::Config(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            base: format!("http://{}", config.addr),
            token: config.token.clone(),
            client,
        })
    }

    /// The URL of `path` (which starts with `/`).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A POST of JSON to a fleet endpoint, with `Authorization: Bearer <token>`.
    pub(crate) fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> reqwest::RequestBuilder {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(t) = &self.token {
            request = request.bearer_auth(t);
        }
        request
    }

    /// A request without a body to a fleet endpoint, with `Authorization: Bearer <token>`.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.client.request(method, self.url(path));
        if let Some(t) = &self.token {
            request = request.bearer_auth(t);
        }
        request
    }

    /// A POST of line protocol to `path`, with InfluxDB's `Authorization: Token <token>`.
    pub(crate) fn post_lines(&self, path: &str, body: String) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .post(self.url(path))
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(body);
        if let Some(t) = &self.token {
            request = request.header("Authorization", format!("Token {t}"));
        }
        request
    }

    /// The error for a request (`what`, e.g. "registering device d1") that got no answer.
    pub(crate) fn unreachable(&self, what: &str, source: reqwest::Error) -> SimError {
        SimError::Unreachable {
            what: what.to_owned(),
            url: self.base.clone(),
            source,
        }
    }
}

/// The error for a request (`what`) answered with a failure status, with the server's
/// message from the body.
pub(crate) async fn refusal(what: &str, response: reqwest::Response) -> SimError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    SimError::Api {
        what: what.to_owned(),
        status: status.as_u16(),
        message: server_message(status, &body),
    }
}

/// `{"error": "..."}` or `{"message": "..."}` of `body`, else the body itself, else the
/// status's reason.
pub(crate) fn server_message(status: reqwest::StatusCode, body: &str) -> String {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let from_json = json.as_ref().and_then(|v| {
        v.get("error")
            .or_else(|| v.get("message"))
            .and_then(|m| m.as_str())
            .map(str::to_owned)
    });
    match from_json {
        Some(m) => m,
        None if !body.trim().is_empty() => body.trim().chars().take(500).collect(),
        None => status
            .canonical_reason()
            .unwrap_or("no explanation")
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_message_comes_from_either_error_shape() {
        let s = reqwest::StatusCode::UNAUTHORIZED;
        assert_eq!(
            server_message(s, r#"{"error":"unknown or revoked API token"}"#),
            "unknown or revoked API token"
        );
        assert_eq!(
            server_message(s, r#"{"code":"invalid","message":"line 3: no fields"}"#),
            "line 3: no fields"
        );
        assert_eq!(server_message(s, "plain text\n"), "plain text");
        assert_eq!(server_message(s, ""), "Unauthorized");
    }
}
