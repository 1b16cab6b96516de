//! `Api`: raw HTTP to the workspace API, keeping every response body that was not a workload
//! read for the canary scan. It speaks to a real `secretfs serve` process, or to the router in
//! this process (`Api::in_process`): the same requests and answers without a port, a process
//! start or a socket, for the tests that only look at statuses and bodies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use serde_json::Value;
use tower::ServiceExt;

use secretfs::api::AppState;
use secretfs::service::{LocalPaths, OpenMode, Service};

use super::{Scratch, Server, assert_no_canary};

pub struct Api {
    to: To,
    bodies: Arc<Mutex<Vec<(String, String)>>>,
}

enum To {
    /// A server process; its log is shown when a request fails below HTTP (the server died).
    Process {
        http: reqwest::Client,
        url: String,
        log: PathBuf,
    },
    /// The router `secretfs serve` would serve, over a store in the test's scratch dir, and the
    /// task writing its read audits (it ends with the test's runtime).
    Router {
        router: axum::Router,
        _audit: tokio::task::JoinHandle<()>,
    },
}

impl Api {
    /// Requests to the server process `server`.
    pub fn new(server: &Server) -> Api {
        let mut api = Self::process(&server.url, server.log_path.clone());
        if let (Some(ca), To::Process { http, .. }) = (&server.ca, &mut api.to) {
            let pem = std::fs::read(ca).unwrap();
            *http = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
                .build()
                .unwrap();
        }
        api
    }

    /// Requests to another HTTP server of the tests (the identity tests' issuer), whose log
    /// is its own.
    pub fn at(url: &str) -> Api {
        Self::process(url, PathBuf::new())
    }

    fn process(url: &str, log: PathBuf) -> Api {
        secretfs::client::install_crypto_provider();
        Api {
            to: To::Process {
                http: reqwest::Client::new(),
                url: url.to_owned(),
                log,
            },
            bodies: Arc::default(),
        }
    }

    /// The router over a new SQLite store in `scratch`, set up as `secretfs serve --init
    /// --audit-interval 100ms` sets up its own (the first admin; read audits written in batches);
    /// returns it with the admin's token. Requests come from a loopback address, as through
    /// `Server`: the failure delay and the audit records see a client address.
    pub async fn in_process(scratch: &Scratch) -> (Api, String) {
        let paths = LocalPaths::resolve(Some(scratch.path().join("server.db")), None).unwrap();
        let service = Service::open_local(&paths, OpenMode::CreateIfMissing, 8)
            .await
            .expect("open the store");
        let service = Arc::new(service);
        let admin = service
            .first_admin("admin")
            .await
            .unwrap()
            .expect("a new store has no admin");
        let token = admin.token.expose_token().to_owned();
        assert!(service.create_first_admin(admin).await.unwrap());
        let audit = service.batch_reads(Duration::from_millis(100));
        let router = secretfs::api::router(AppState::new(service));
        let api = Api {
            to: To::Router {
                router,
                _audit: audit,
            },
            bodies: Arc::default(),
        };
        (api, token)
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> (u16, String, HeaderMap) {
        let (status, text, headers) = match &self.to {
            To::Process { http, url, log } => {
                let mut req = http.request(method.parse().unwrap(), format!("{url}{path}"));
                if let Some(t) = token {
                    req = req.header("Authorization", format!("Bearer {t}"));
                }
                if let Some((ctype, bytes)) = body {
                    req = req.header("Content-Type", ctype).body(bytes);
                }
                let resp = req.send().await.unwrap_or_else(|e| {
                    panic!(
                        "{method} {path}: {e:?}\nserver log:\n{}",
                        std::fs::read_to_string(log).unwrap_or_default()
                    )
                });
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                (status, resp.text().await.unwrap(), headers)
            }
            To::Router { router, .. } => {
                let mut req = axum::http::Request::builder().method(method).uri(path);
                if let Some(t) = token {
                    req = req.header("Authorization", format!("Bearer {t}"));
                }
                let body = match body {
                    Some((ctype, bytes)) => {
                        req = req.header("Content-Type", ctype);
                        Body::from(bytes)
                    }
                    None => Body::empty(),
                };
                let mut req = req.body(body).unwrap();
                req.extensions_mut()
                    .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
                let resp = router.clone().oneshot(req).await.unwrap();
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .unwrap();
                (
                    status,
                    String::from_utf8_lossy(&bytes).into_owned(),
                    headers,
                )
            }
        };
        if !path.starts_with("/api/v1/workload/") {
            self.bodies
                .lock()
                .unwrap()
                .push((format!("{method} {path} -> {status}"), text.clone()));
        }
        (status, text, headers)
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| ("application/json", serde_json::to_vec(&b).unwrap()));
        let (status, text, _) = self.raw(method, path, Some(token), body).await;
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    /// Every response body seen (but workload reads) is free of the canary.
    pub fn assert_no_canary(&self) {
        for (what, body) in self.bodies.lock().unwrap().iter() {
            assert_no_canary(what, body.as_bytes());
        }
    }

    /// Creates a user through the API and returns their token.
    pub async fn user(&self, admin: &str, name: &str) -> String {
        let (status, v) = self
            .call(
                "POST",
                "/api/v1/users",
                admin,
                Some(serde_json::json!({ "name": name })),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    /// Creates a secret in the default workspace.
    pub async fn create(
        &self,
        token: &str,
        name: &str,
        value: &str,
        visibility: &str,
    ) -> (u16, Value) {
        self.call(
            "POST",
            "/api/v1/workspaces/default/secrets",
            token,
            Some(serde_json::json!({ "name": name, "value": value, "visibility": visibility })),
        )
        .await
    }

    /// Mints a workload token for `secrets`, with the fields of `extra` added to the request.
    pub async fn mint(&self, token: &str, secrets: &[&str], extra: Value) -> (u16, Value) {
        let mut body = serde_json::json!({ "secrets": secrets });
        if let Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        self.call(
            "POST",
            "/api/v1/workspaces/default/tokens",
            token,
            Some(body),
        )
        .await
    }

    /// Creates the private secret `name` and mints a workload token for it: the token, and the
    /// revision its first read answers (the `since` of a long-poll).
    pub async fn reader_of(&self, admin: &str, name: &str, value: &str) -> (String, String) {
        let (status, v) = self.create(admin, name, value, "private").await;
        assert_eq!(status, 201, "{v}");
        let (status, v) = self.mint(admin, &[name], serde_json::json!({})).await;
        assert_eq!(status, 201, "{v}");
        let token = v["token"].as_str().unwrap().to_owned();
        let (status, now) = self.workload(&token, "").await;
        assert_eq!(status, 200, "{now}");
        let revision = now["revision"].as_str().unwrap().to_owned();
        (token, revision)
    }

    /// The workload read, with `query` (`""` or `"?..."`).
    pub async fn workload(&self, token: &str, query: &str) -> (u16, Value) {
        let (status, text, _) = self
            .raw(
                "GET",
                &format!("/api/v1/workload/secrets{query}"),
                Some(token),
                None,
            )
            .await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// The names in a secret list.
pub fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}
