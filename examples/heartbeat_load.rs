//! Load client for `benches/heartbeats.sh`: sends authenticated heartbeats to one drainscaler
//! from CONNECTIONS keep-alive HTTP/1.1 connections for SECONDS, and prints throughput,
//! latency percentiles and errors. Plain tokio and a minimal HTTP/1.1 client, so that the
//! client costs as little CPU as possible on a machine it shares with the server.
//!
//!   heartbeat_load ADDR TOKENS_FILE CONNECTIONS SECONDS [FLOOD_CONNECTIONS]
//!
//! TOKENS_FILE holds one projected ServiceAccount token per line; connection `i` cycles
//! through the tokens starting at `i`, so every token is reused (the server's TokenReview cache
//! is hit, as in steady state).
//!
//! FLOOD_CONNECTIONS more connections send, at the same time, heartbeats with forged tokens:
//! JWT-shaped, for audience drainscaler, not expired, each one new (a fresh `jti`), so that none
//! is refused unread or from the cache: the worst an unauthenticated client can send. Their
//! answers are counted apart.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one connection saw.
#[derive(Default)]
struct Tally {
    /// Latency of every 200 answer, in microseconds.
    latencies_us: Vec<u32>,
    /// Non-200 answers, by status.
    statuses: Vec<(u16, u64)>,
    /// Connections that broke (then reopened).
    io_errors: u64,
}

impl Tally {
    fn status(&mut self, code: u16) {
        match self.statuses.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => self.statuses.push((code, 1)),
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heartbeat_load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, tokens_file, connections, seconds, flood) = match args.as_slice() {
        [a, t, c, s] => (a, t, c, s, "0"),
        [a, t, c, s, f] => (a, t, c, s, f.as_str()),
        _ => {
            bail!("usage: heartbeat_load ADDR TOKENS_FILE CONNECTIONS SECONDS [FLOOD_CONNECTIONS]")
        }
    };
    let flood: usize = flood.parse().context("FLOOD_CONNECTIONS")?;
    let tokens: Vec<String> = std::fs::read_to_string(tokens_file)
        .with_context(|| format!("reading {tokens_file}"))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if tokens.is_empty() {
        bail!("{tokens_file} holds no tokens");
    }
    let connections: usize = connections.parse().context("CONNECTIONS")?;
    let seconds: u64 = seconds.parse().context("SECONDS")?;
    // One worker thread: the server under test gets the other core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let requests: Vec<Vec<u8>> = tokens
        .iter()
        .map(|t| {
            let body = r#"{"sessions": 7}"#;
            format!(
                "POST /v1/heartbeats HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .collect();
    let requests = std::sync::Arc::new(requests);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let (tallies, flooded) = runtime.block_on(async {
        let flooders: Vec<_> = (0..flood)
            .map(|i| {
                let addr = addr.clone();
                tokio::spawn(async move { flood_connection(&addr, i, deadline).await })
            })
            .collect();
        let tasks: Vec<_> = (0..connections)
            .map(|i| {
                let requests = std::sync::Arc::clone(&requests);
                let addr = addr.clone();
                tokio::spawn(async move { connection(&addr, &requests, i, deadline).await })
            })
            .collect();
        let mut tallies = Vec::new();
        for t in tasks {
            tallies.push(t.await);
        }
        let mut flooded = Tally::default();
        for f in flooders {
            if let Ok(t) = f.await {
                flooded.io_errors += t.io_errors;
                for (code, n) in t.statuses {
                    for _ in 0..n {
                        flooded.status(code);
                    }
                }
            }
        }
        (tallies, flooded)
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = Tally::default();
    for t in tallies {
        let t = t.context("a connection task panicked")?;
        all.latencies_us.extend(t.latencies_us);
        for (code, n) in t.statuses {
            for _ in 0..n {
                all.status(code);
            }
        }
        all.io_errors += t.io_errors;
    }
    all.latencies_us.sort_unstable();
    let ok = all.latencies_us.len();
    let pct = |p: f64| {
        if ok == 0 {
            return 0.0;
        }
        let i = ((p * ok as f64).ceil() as usize).clamp(1, ok) - 1;
        f64::from(all.latencies_us[i]) / 1000.0
    };
    let errors: u64 = all.statuses.iter().map(|(_, n)| n).sum();
    println!("connections:              {connections}");
    println!("tokens (pods):            {}", tokens.len());
    println!("duration:                 {elapsed:.1}s");
    println!("accepted heartbeats:      {ok}");
    println!(
        "throughput:               {:.0} heartbeats/s",
        ok as f64 / elapsed
    );
    println!("latency p50:              {:.2} ms", pct(0.50));
    println!("latency p99:              {:.2} ms", pct(0.99));
    println!(
        "latency max:              {:.2} ms",
        all.latencies_us
            .last()
            .map_or(0.0, |&u| f64::from(u) / 1000.0)
    );
    println!("error answers:            {errors} {:?}", all.statuses);
    println!("broken connections:       {}", all.io_errors);
    if flood > 0 {
        let sent: u64 = flooded.statuses.iter().map(|(_, n)| n).sum();
        println!("flood connections:        {flood}");
        println!(
            "flood requests:           {sent} ({:.0}/s), answers {:?}, broken connections {}",
            sent as f64 / elapsed,
            flooded.statuses,
            flooded.io_errors
        );
    }
    Ok(())
}

/// Sends heartbeats with a new forged token each time until `deadline`; counts the answers.
async fn flood_connection(addr: &str, first: usize, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut buf = vec![0u8; 4096];
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    let mut n: u64 = (first as u64) << 40;
    'reconnect: while Instant::now() < deadline {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            tally.io_errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        while Instant::now() < deadline {
            n += 1;
            let claims = format!(r#"{{"aud":["drainscaler"],"exp":{exp},"jti":"{n}"}}"#);
            let token = format!(
                "eyJhbGciOiJSUzI1NiJ9.{}.Zm9yZ2Vk",
                URL_SAFE_NO_PAD.encode(claims)
            );
            let body = r#"{"sessions": 7}"#;
            let request = format!(
                "POST /v1/heartbeats HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if stream.write_all(request.as_bytes()).await.is_err() {
                tally.io_errors += 1;
                continue 'reconnect;
            }
            match read_response(&mut stream, &mut buf).await {
                Some(code) => tally.status(code),
                None => {
                    tally.io_errors += 1;
                    continue 'reconnect;
                }
            }
        }
    }
    tally
}

async fn connection(addr: &str, requests: &[Vec<u8>], first: usize, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut next = first;
    let mut buf = vec![0u8; 4096];
    'reconnect: while Instant::now() < deadline {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            tally.io_errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        while Instant::now() < deadline {
            let request = &requests[next % requests.len()];
            next = next.wrapping_add(1);
            let sent = Instant::now();
            if stream.write_all(request).await.is_err() {
                tally.io_errors += 1;
                continue 'reconnect;
            }
            match read_response(&mut stream, &mut buf).await {
                Some(200) => tally
                    .latencies_us
                    .push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX)),
                Some(code) => tally.status(code),
                None => {
                    tally.io_errors += 1;
                    continue 'reconnect;
                }
            }
        }
    }
    tally
}

/// Reads one response with a Content-Length body; returns its status code.
async fn read_response(stream: &mut TcpStream, buf: &mut [u8]) -> Option<u16> {
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await.ok()?;
        if n == 0 {
            return None;
        }
        filled += n;
        let head = &buf[..filled];
        let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
            if filled == buf.len() {
                return None;
            }
            continue;
        };
        let text = std::str::from_utf8(&head[..end]).ok()?;
        let code: u16 = text.get(9..12)?.parse().ok()?;
        let length: usize = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let total = end + 4 + length;
        while filled < total {
            if total > buf.len() {
                return None;
            }
            let n = stream.read(&mut buf[filled..]).await.ok()?;
            if n == 0 {
                return None;
            }
            filled += n;
        }
        return Some(code);
    }
}
