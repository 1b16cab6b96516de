//! Watch fan-out: holds N long-polls on a server's workload read, rotates the secret, and reports
//! how long after the update returned every poll had returned. Used by scripts/bench-scale.
//!
//!   watch_fanout URL WORKLOAD_TOKEN USER_TOKEN SECRET N
//!
//! Every poll is its own connection, so the process (and the server) need more file descriptors
//! than N; this program raises its own soft limit to the hard one.

use std::time::{Duration, Instant};

use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, workload, user, secret, n] = args.as_slice() else {
        eprintln!("usage: watch_fanout URL WORKLOAD_TOKEN USER_TOKEN SECRET N");
        std::process::exit(2);
    };
    let n: usize = n.parse()?;
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    secretfs::client::install_crypto_provider();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(n)
        .build()?;
    let read = format!("{url}/api/v1/workload/secrets?values=false");
    let first: Value = http
        .get(&read)
        .bearer_auth(workload)
        .send()
        .await?
        .json()
        .await?;
    let revision = first["revision"].as_str().ok_or("no revision")?.to_owned();

    let started = Instant::now();
    let mut polls = Vec::with_capacity(n);
    for _ in 0..n {
        let http = http.clone();
        let url = format!("{read}&wait=60s&since={revision}");
        let token = workload.clone();
        polls.push(tokio::spawn(async move {
            let resp = http.get(&url).bearer_auth(&token).send().await;
            let done = Instant::now();
            match resp {
                Ok(r) if r.status().is_success() => {
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    (done, v["revision"].as_str().map(str::to_owned))
                }
                _ => (done, None),
            }
        }));
    }
    // Let every poll reach the server and park there.
    tokio::time::sleep(Duration::from_secs(3) + Duration::from_micros(300 * n as u64)).await;
    // A second between saying so and rotating, for a script to read the server's memory while
    // every poll is held and none is being answered.
    eprintln!("{n} polls opened in {:?}; holding", started.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("rotating");

    let body = serde_json::json!({ "value": format!("rotated-{}", std::process::id()) });
    let resp = http
        .patch(format!("{url}/api/v1/workspaces/default/secrets/{secret}"))
        .bearer_auth(user)
        .json(&body)
        .send()
        .await?;
    let updated = Instant::now();
    if !resp.status().is_success() {
        return Err(format!("update failed: HTTP {}", resp.status()).into());
    }
    let mut lags = Vec::with_capacity(n);
    let mut failed = 0;
    for p in polls {
        let (done, rev) = p.await?;
        match rev {
            Some(r) if r != revision => lags.push(done.saturating_duration_since(updated)),
            _ => failed += 1,
        }
    }
    lags.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if lags.is_empty() {
        return Err("no poll saw the rotation".into());
    }
    println!(
        "watchers={n} saw_rotation={} failed_or_early={failed} median_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        lags.len(),
        ms(lags[lags.len() / 2]),
        ms(lags[lags.len() * 99 / 100]),
        ms(*lags.last().unwrap())
    );
    Ok(())
}
