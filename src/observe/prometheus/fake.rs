//! A tiny HTTP server on 127.0.0.1 for the Prometheus client's tests: it answers every request
//! the same way and records what it was sent. Plain threads and std sockets, so that it runs
//! apart from the runtime under test (whose clock may be paused).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How the server answers.
#[derive(Clone, Debug)]
pub enum Answer {
    /// A status line, extra header lines and a body sent with its Content-Length.
    Full {
        status: u16,
        headers: Vec<String>,
        body: Vec<u8>,
    },
    /// A 200 that declares `Content-Length: length` and sends nothing more.
    Declares { length: u64 },
    /// A chunked 200 that never ends, until the client goes away.
    Endless,
    /// Reads the request and never answers.
    Silent,
    /// A 200 with the JSON body a function makes of the request's head and body.
    Compute(Responder),
}

/// Makes an answer's body from the request.
#[derive(Clone)]
pub struct Responder(pub Arc<dyn Fn(&str) -> String + Send + Sync>);

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder")
    }
}

/// What the server saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub requests: AtomicU64,
    /// Bytes of body written (for `Endless`).
    pub written: AtomicU64,
    /// Each request's head and body, as text.
    pub raw: Mutex<Vec<String>>,
}

impl Seen {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn raw(&self) -> Vec<String> {
        self.raw
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn start(answer: Answer) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the fake server");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("the fake server's address");
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (s, halt) = (Arc::clone(&seen), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !halt.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (answer, s, halt) = (answer.clone(), Arc::clone(&s), Arc::clone(&halt));
                        std::thread::spawn(move || serve(stream, &answer, &s, &halt));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server { addr, seen, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(mut stream: TcpStream, answer: &Answer, seen: &Seen, halt: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Some(request) = read_request(&mut stream) else {
        return;
    };
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let request_text = request.clone();
    seen.raw
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(request);
    match answer {
        Answer::Full {
            status,
            headers,
            body,
        } => {
            let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
            for h in headers {
                head.push_str(h);
                head.push_str("\r\n");
            }
            head.push_str("Connection: close\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        }
        Answer::Declares { length } => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
            hold(&mut stream, halt);
        }
        Answer::Endless => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            let chunk = vec![b' '; 64 * 1024];
            let framed = [
                format!("{:x}\r\n", chunk.len()).into_bytes(),
                chunk,
                b"\r\n".to_vec(),
            ]
            .concat();
            while !halt.load(Ordering::SeqCst) && stream.write_all(&framed).is_ok() {
                seen.written.fetch_add(64 * 1024, Ordering::SeqCst);
            }
        }
        Answer::Silent => hold(&mut stream, halt),
        Answer::Compute(Responder(respond)) => {
            let body = respond(&request_text);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        }
    }
}

/// Keeps the connection open, answering nothing, until the client closes it.
fn hold(stream: &mut TcpStream, halt: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 1024];
    while !halt.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// One request's head and body (by Content-Length), as text.
fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while raw.len() < head_end + length {
        let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
        raw.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&raw).into_owned())
}
