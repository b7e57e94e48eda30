//! A TCP proxy in front of the controller replicas' heartbeat port, whose address is the app
//! pods' heartbeat URL. It forwards each connection to the replica that answers heartbeats (the
//! leader), and can cut the path as a partition would: drop requests (hold the connection and
//! forward nothing) or drop replies (forward the request, never return the answer), for every
//! pod or only for some source addresses (the pods send heartbeats from their pod IPs).

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Which direction a partition drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Requests never reach the controller; the connection is held open.
    Requests,
    /// Requests reach the controller (which records them); its answers are dropped.
    Replies,
}

/// The partition in force: a cut for every source, or for the listed pod IPs only.
#[derive(Clone, Debug, Default)]
pub struct Partition {
    pub cut: Option<Cut>,
    /// `None`: every source; `Some`: only these addresses.
    pub only: Option<BTreeSet<IpAddr>>,
}

impl Partition {
    fn drops(&self, direction: Cut, source: IpAddr) -> bool {
        self.cut == Some(direction) && self.only.as_ref().is_none_or(|s| s.contains(&source))
    }
}

struct Shared {
    backends: Mutex<Vec<String>>,
    leader: Mutex<Option<String>>,
    partition: Mutex<Partition>,
    stop: AtomicBool,
    /// Chunks dropped by the partition, for the report: a cut that dropped nothing did not cut.
    dropped_chunks: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct PartitionProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl PartitionProxy {
    /// Listens on `host` (where the pods reach it: `support::listen_host`) and starts finding
    /// the leader among `backends`.
    pub fn start(host: &str, backends: Vec<String>) -> PartitionProxy {
        let listener = TcpListener::bind((host, 0)).expect("a port for the partition proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let shared = Arc::new(Shared {
            backends: Mutex::new(backends),
            leader: Mutex::new(None),
            partition: Mutex::new(Partition::default()),
            stop: AtomicBool::new(false),
            dropped_chunks: AtomicU64::new(0),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept_loop(&listener, &shared))
        };
        let find = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || find_leader_loop(&shared))
        };
        PartitionProxy {
            addr,
            shared,
            threads: vec![accept, find],
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The replicas to route to (after one was replaced).
    pub fn set_backends(&self, backends: Vec<String>) {
        *lock(&self.shared.backends) = backends;
    }

    /// The replica heartbeats go to now, if one answers as leader.
    pub fn leader(&self) -> Option<String> {
        lock(&self.shared.leader).clone()
    }

    pub fn partition(&self, p: Partition) {
        *lock(&self.shared.partition) = p;
    }

    pub fn heal(&self) {
        self.partition(Partition::default());
    }

    pub fn dropped_chunks(&self) -> u64 {
        self.shared.dropped_chunks.load(Ordering::SeqCst)
    }
}

impl Drop for PartitionProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A replica that leads answers a heartbeat it cannot parse with a 4xx; one that does not lead
/// answers 503 `not_leader` before reading it; a frozen or dead one does not answer (within a
/// second, so that a frozen one does not hold up the search).
fn answers_as_leader(addr: &str) -> bool {
    let Ok(to) = addr.parse::<SocketAddr>() else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let request = format!(
        "POST /v1/heartbeats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).is_err() {
        return false;
    }
    // "HTTP/1.1 503"
    let status = String::from_utf8_lossy(&head[9..12]).into_owned();
    !status.is_empty() && status != "503"
}

fn find_leader_loop(shared: &Shared) {
    while !shared.stop.load(Ordering::SeqCst) {
        let backends = lock(&shared.backends).clone();
        // Until another answers, connections go to the last leader seen, as a Service keeps
        // routing to a frozen leader that still wears the leader label.
        if let Some(leader) = backends.into_iter().find(|b| answers_as_leader(b)) {
            *lock(&shared.leader) = Some(leader);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, peer)) => {
                let shared = Arc::clone(shared);
                std::thread::spawn(move || relay(client, peer.ip(), &shared));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn relay(client: TcpStream, source: IpAddr, shared: &Arc<Shared>) {
    let _ = client.set_nonblocking(false);
    let Some(leader) = lock(&shared.leader).clone() else {
        return; // no replica has answered yet: the connection closes, as with no endpoints
    };
    let Ok(backend) = leader
        .parse::<SocketAddr>()
        .map_err(|_| ())
        .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).map_err(|_| ()))
    else {
        return;
    };
    let (Ok(client2), Ok(backend2)) = (client.try_clone(), backend.try_clone()) else {
        return;
    };
    let up = {
        let shared = Arc::clone(shared);
        std::thread::spawn(move || pump(client, backend, Cut::Requests, source, &shared))
    };
    pump(backend2, client2, Cut::Replies, source, shared);
    let _ = up.join();
}

/// Copies `from` to `to` until either ends, dropping what the partition drops in `direction`.
fn pump(mut from: TcpStream, mut to: TcpStream, direction: Cut, source: IpAddr, shared: &Shared) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 8192];
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if lock(&shared.partition).drops(direction, source) {
                    shared.dropped_chunks.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
