//! Plain HTTP to a server process from blocking test code, and the one-call way to add a user.

use super::Server;

/// Creates user `name` through the server at `url` with the admin token `admin`; returns the
/// new user's token.
pub async fn add_user(url: &str, admin: &str, name: &str) -> String {
    secretfs::client::install_crypto_provider();
    let resp = reqwest::Client::new()
        .post(format!("{url}/api/v1/users"))
        .bearer_auth(admin)
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .expect("POST /api/v1/users");
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    assert_eq!(status, 201, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

/// A blocking HTTP client for one server: JSON in, (status, JSON) out. Its calls may be made from
/// several threads at once (a long-poll held on one while another revokes its token).
pub struct Http {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    pub url: String,
}

impl Http {
    pub fn new(server: &Server) -> Http {
        Self::at(&server.url)
    }

    pub fn at(url: &str) -> Http {
        secretfs::client::install_crypto_provider();
        Http {
            rt: tokio::runtime::Runtime::new().unwrap(),
            http: reqwest::Client::new(),
            url: url.to_owned(),
        }
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.try_call(method, path, token, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Like `call`, with a failure below HTTP (the server went away) as an error.
    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), reqwest::Error> {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.rt.block_on(async {
            let r = req.send().await?;
            let status = r.status().as_u16();
            let text = r.text().await?;
            Ok((
                status,
                serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
            ))
        })
    }

    /// A new user's first token.
    pub fn user(&self, admin: &str, name: &str) -> String {
        let (status, v) = self.call(
            "POST",
            "/api/v1/users",
            admin,
            Some(serde_json::json!({ "name": name })),
        );
        assert_eq!(status, 201, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }
}
