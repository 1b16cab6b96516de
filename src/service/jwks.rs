//! Issuers' keys for workload identity: fetched over HTTPS (discovery, then `jwks_uri`, or a
//! JWKS URL), kept for the lifetime the issuer's `Cache-Control` gives (bounded), fetched again
//! early only for a key id the cached set lacks, and then at most once per `refetch` interval:
//! a flood of tokens with made-up key ids costs the issuer one request per interval, not one
//! per token. An issuer that cannot be reached once its keys have expired fails closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::identity::{KeySet, KeySource, Refusal, fetchable, shown};

/// The shortest and longest time keys are kept (an issuer's `max-age` is clamped to these;
/// without one, [`DEFAULT_LIFE`]).
const LONGEST_LIFE: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_LIFE: Duration = Duration::from_secs(15 * 60);
/// Discovery documents and key sets larger than this are refused (real ones are a few KiB).
const MAX_DOCUMENT: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One source's keys as last fetched.
struct Entry {
    keys: Option<Arc<KeySet>>,
    /// Until when the keys may be used without fetching again.
    fresh_until: Instant,
    /// The last fetch attempt, successful or not (the refetch rate limit).
    attempted: Option<Instant>,
    /// Why the last attempt failed, for the next refusal's message.
    last_error: Option<String>,
}

/// The key cache of one server.
pub struct Jwks {
    refetch: Duration,
    /// For URLs that name this host outright (`localhost`, `127.0.0.1`): an admin's choice.
    http: std::sync::OnceLock<reqwest::Client>,
    /// For every other URL: its name may not resolve to this host (see [`NotThisHost`]).
    remote: std::sync::OnceLock<reqwest::Client>,
    entries: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Entry>>>>,
}

impl Jwks {
    pub fn new(refetch: Duration) -> Jwks {
        Jwks {
            refetch,
            http: std::sync::OnceLock::new(),
            remote: std::sync::OnceLock::new(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The client for `url`: one that may reach this host only when the URL names it outright.
    fn http(&self, url: &str) -> Result<&reqwest::Client, Refusal> {
        let local = crate::identity::names_this_host(url);
        let cell = if local { &self.http } else { &self.remote };
        if let Some(c) = cell.get() {
            return Ok(c);
        }
        crate::client::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            // A redirect could leave HTTPS or this host's rule; the URL given is the one fetched.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("secretfs/", env!("CARGO_PKG_VERSION")));
        if !local {
            builder = builder.dns_resolver(NotThisHost);
        }
        let client = builder
            .build()
            .map_err(|e| Refusal::KeysUnavailable(format!("cannot set up HTTP: {e}")))?;
        Ok(cell.get_or_init(|| client))
    }

    /// The keys of `source` for tokens of `issuer` that name `kid`: cached while fresh and
    /// holding `kid`; otherwise fetched again (at most once per interval for an unknown kid).
    pub async fn keys(
        &self,
        issuer: &str,
        source: &KeySource,
        kid: Option<&str>,
    ) -> Result<Arc<KeySet>, Refusal> {
        let url_key = match source {
            KeySource::Inline { jwks } => {
                let (set, _) = KeySet::parse(jwks.as_bytes()).map_err(Refusal::KeysUnavailable)?;
                return Ok(Arc::new(set));
            }
            KeySource::Discovery => format!("discovery {issuer}"),
            KeySource::Url { url } => format!("url {url}"),
        };
        let entry = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries
                .entry(url_key)
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Mutex::new(Entry {
                        keys: None,
                        fresh_until: Instant::now(),
                        attempted: None,
                        last_error: None,
                    }))
                })
                .clone()
        };
        // One fetch per source at a time: concurrent exchanges wait for it and use its keys.
        let mut e = entry.lock().await;
        let now = Instant::now();
        let fresh = e.keys.is_some() && now < e.fresh_until;
        let has_kid = e.keys.as_ref().is_some_and(|k| k.has(kid));
        let may_fetch = e
            .attempted
            .is_none_or(|t| now.duration_since(t) >= self.refetch);
        if (!fresh || !has_kid) && may_fetch {
            e.attempted = Some(now);
            match self.fetch(issuer, source).await {
                Ok((set, life)) => {
                    e.keys = Some(Arc::new(set));
                    e.fresh_until = Instant::now() + life.max(self.refetch);
                    e.last_error = None;
                }
                Err(why) => {
                    tracing::warn!(issuer = %shown(issuer), error = %why, "cannot fetch the issuer's keys");
                    e.last_error = Some(why);
                }
            }
        }
        let fresh = e.keys.is_some() && Instant::now() < e.fresh_until;
        match (&e.keys, fresh, &e.last_error) {
            (Some(keys), true, _) => Ok(keys.clone()),
            (_, _, Some(why)) => Err(Refusal::KeysUnavailable(why.clone())),
            _ => Err(Refusal::KeysUnavailable(
                "its keys expired and may not be fetched again yet".into(),
            )),
        }
    }

    /// Fetches a key set (through discovery if the source says so) and how long to keep it.
    async fn fetch(&self, issuer: &str, source: &KeySource) -> Result<(KeySet, Duration), String> {
        let url = match source {
            KeySource::Inline { .. } => unreachable!("inline keys are never fetched"),
            KeySource::Url { url } => url.clone(),
            KeySource::Discovery => {
                let at = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let (body, _) = self.get(&at).await?;
                #[derive(serde::Deserialize)]
                struct Discovery {
                    issuer: String,
                    jwks_uri: String,
                }
                let d: Discovery = serde_json::from_slice(&body)
                    .map_err(|e| format!("{at} is not an OpenID discovery document ({e})"))?;
                // OpenID Connect Discovery 1.0, 4.3: the document must name the issuer it
                // was fetched for, or it is somebody else's.
                if d.issuer != issuer {
                    return Err(format!(
                        "the discovery document at {at} names the issuer {}, not this one",
                        shown(&d.issuer)
                    ));
                }
                fetchable(&d.jwks_uri).map_err(|e| format!("its jwks_uri {e}"))?;
                // Only an issuer on this host may send the server's fetch to this host: a
                // remote issuer's document must not turn the server into a probe of its own
                // ports. Here the spellings (`127.1`, `[::ffff:127.0.0.1]`, ...); a name that
                // resolves to this host is refused by the remote client's resolver.
                if crate::identity::names_this_host(&d.jwks_uri)
                    && !crate::identity::names_this_host(issuer)
                {
                    return Err(format!(
                        "the discovery document at {at} points at this host for its keys"
                    ));
                }
                d.jwks_uri
            }
        };
        let (body, life) = self.get(&url).await?;
        let (set, skipped) = KeySet::parse(&body).map_err(|e| format!("{url}: {e}"))?;
        if !skipped.is_empty() {
            tracing::info!(url = %url, skipped = %skipped.join("; "), "issuer keys skipped");
        }
        if set.is_empty() {
            return Err(format!("{url} holds no key that can verify a signature"));
        }
        Ok((set, life))
    }

    /// GETs a small JSON document; its lifetime from `Cache-Control`.
    async fn get(&self, url: &str) -> Result<(Vec<u8>, Duration), String> {
        fetchable(url)?;
        // An address written in the URL is not resolved, so the resolver's check of this host's
        // own interface addresses is made here.
        if !crate::identity::names_this_host(url)
            && let Some(ip) = literal_address(url)
            && own_addresses().contains(&ip)
        {
            return Err(format!(
                "{} is an address of this host, which a remote issuer's keys may not be fetched from",
                shown(url)
            ));
        }
        let resp = self
            .http(url)
            .map_err(|e| e.to_string())?
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("cannot reach {url}: {}", crate::client::reason(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        if resp.content_length().unwrap_or(0) > MAX_DOCUMENT as u64 {
            return Err(format!("{url} answered more than {MAX_DOCUMENT} bytes"));
        }
        let life = cache_life(
            resp.headers()
                .get(reqwest::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok()),
        );
        // Read in chunks up to the cap: a chunked answer has no length to check first.
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("cannot read {url}: {}", crate::client::reason(&e)))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(format!("{url} answered more than {MAX_DOCUMENT} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, life))
    }
}

/// The resolver of fetches for URLs that do not name this host: every address a name resolves
/// to is checked, at each connection (so a name that resolves elsewhere at one moment and here
/// at the next is caught too), and this host's addresses are dropped: loopback, unspecified and
/// link-local ones ([`crate::identity::is_local_ip`]) and the addresses of its own interfaces. A
/// name left with none fails the fetch, saying so.
struct NotThisHost;

impl reqwest::dns::Resolve for NotThisHost {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let own = own_addresses();
            let allowed: Vec<std::net::SocketAddr> = found
                .into_iter()
                .filter(|a| !crate::identity::is_local_ip(a.ip()) && !own.contains(&a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!(
                    "{} resolves only to this host, which a remote issuer's keys may not be                      fetched from",
                    shown(&host)
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The address a URL names, when it names one rather than a host name.
fn literal_address(url: &str) -> Option<std::net::IpAddr> {
    match url::Url::parse(url).ok()?.host()? {
        url::Host::Ipv4(v4) => Some(v4.into()),
        url::Host::Ipv6(v6) => Some(v6.into()),
        url::Host::Domain(_) => None,
    }
}

/// The addresses of this host's interfaces, as they are now.
fn own_addresses() -> Vec<std::net::IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| {
            let sa = a.address?;
            if let Some(v4) = sa.as_sockaddr_in() {
                Some(std::net::IpAddr::V4(v4.ip()))
            } else {
                sa.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

/// How long a response may be kept: its `max-age` (`no-store`/`no-cache`: not at all, which
/// the caller raises to the refetch interval), clamped to a day; a default without one.
pub fn cache_life(header: Option<&str>) -> Duration {
    let Some(h) = header else {
        return DEFAULT_LIFE;
    };
    let mut life = None;
    for d in h.split(',').map(str::trim) {
        let d = d.to_ascii_lowercase();
        if d == "no-store" || d == "no-cache" {
            return Duration::ZERO;
        }
        if let Some(n) = d.strip_prefix("max-age=") {
            life = n
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    life.unwrap_or(DEFAULT_LIFE).min(LONGEST_LIFE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_lifetimes_follow_the_issuer_within_bounds() {
        assert_eq!(
            cache_life(Some("public, max-age=3600")),
            Duration::from_secs(3600)
        );
        assert_eq!(cache_life(Some("max-age=99999999")), LONGEST_LIFE);
        assert_eq!(cache_life(Some("no-store")), Duration::ZERO);
        assert_eq!(cache_life(Some("private")), DEFAULT_LIFE);
        assert_eq!(cache_life(None), DEFAULT_LIFE);
    }

    /// A name that resolves only to this host is refused at resolution, whatever resolves it.
    #[tokio::test]
    async fn a_name_of_this_host_resolves_to_nothing_a_fetch_may_use() {
        use reqwest::dns::Resolve;
        for name in ["localhost", "127.0.0.1", "::1"] {
            let resolved = NotThisHost.resolve(name.parse().unwrap()).await;
            let Err(e) = resolved else {
                panic!("{name} resolved to addresses a remote fetch may use");
            };
            assert!(e.to_string().contains("resolves only to this host"), "{e}");
        }
    }
}
