//! A fault-injecting HTTP proxy between snapfs and the S3 server, on
//! 127.0.0.1. Each request is read whole, then either answered by the
//! proxy (503 SlowDown), dropped (the connection closed, as by a server
//! that died), or forwarded to the server on a connection of its own with
//! `Connection: close`, the answer copied back until the server closes.
//! The test switches the behaviour while snapfs runs; counters say what
//! the proxy did, so a test can check that its fault really fired.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Forward,
    /// Answer this many requests with 503 SlowDown, then forward again.
    SlowDown(u64),
    /// Close every connection without an answer (a server that is down).
    Down,
    /// Forward this many requests with a body of more than 1 MiB, then
    /// send half of the next one and behave as `Down` (a server killed
    /// mid-upload).
    DieMidUpload(u64),
}

struct State {
    behaviour: Mutex<Behaviour>,
    slowdowns: AtomicU64,
    dropped: AtomicU64,
    forwarded: AtomicU64,
    stop: AtomicBool,
}

pub struct Proxy {
    port: u16,
    state: Arc<State>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy to the server on `upstream_port`.
    pub fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy port").port();
        let state = Arc::new(State {
            behaviour: Mutex::new(Behaviour::Forward),
            slowdowns: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            for client in listener.incoming() {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let state = shared.clone();
                std::thread::spawn(move || serve(client, upstream_port, &state));
            }
        });
        Proxy {
            port,
            state,
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().unwrap() = behaviour;
    }

    pub fn behaviour(&self) -> Behaviour {
        *self.state.behaviour.lock().unwrap()
    }

    /// Requests answered with 503 so far.
    pub fn slowdowns(&self) -> u64 {
        self.state.slowdowns.load(Ordering::SeqCst)
    }

    /// Requests dropped so far.
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::SeqCst)
    }

    pub fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves the requests of one client connection.
fn serve(client: TcpStream, upstream_port: u16, state: &State) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(120)));
    let mut reader = BufReader::new(match client.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut client = client;
    loop {
        let Some((head, body)) = read_request(&mut reader) else {
            return;
        };
        let behaviour = *state.behaviour.lock().unwrap();
        match behaviour {
            Behaviour::Down => {
                state.dropped.fetch_add(1, Ordering::SeqCst);
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            Behaviour::SlowDown(n) if n > 0 => {
                *state.behaviour.lock().unwrap() = match n - 1 {
                    0 => Behaviour::Forward,
                    left => Behaviour::SlowDown(left),
                };
                state.slowdowns.fetch_add(1, Ordering::SeqCst);
                let xml =
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                           <Message>Please reduce your request rate.</Message></Error>";
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n\
                     Content-Length: {}\r\n\r\n{xml}",
                    xml.len()
                );
                if client.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
            Behaviour::DieMidUpload(n) if n > 0 && body.len() > 1 << 20 => {
                *state.behaviour.lock().unwrap() = Behaviour::DieMidUpload(n - 1);
                state.forwarded.fetch_add(1, Ordering::SeqCst);
                forward(&head, &body, &mut client, upstream_port);
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            Behaviour::DieMidUpload(_) if body.len() > 1 << 20 => {
                *state.behaviour.lock().unwrap() = Behaviour::Down;
                state.dropped.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) {
                    let _ = upstream.write_all(&head);
                    let _ = upstream.write_all(&body[..body.len() / 2]);
                    let _ = upstream.shutdown(Shutdown::Both);
                }
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            _ => {
                state.forwarded.fetch_add(1, Ordering::SeqCst);
                forward(&head, &body, &mut client, upstream_port);
                // The answer ended with the server's close: so does this
                // connection.
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Reads one request: its head with `Connection: close` put in, and its
/// body (by Content-Length). None at the end of the connection.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut head = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse().ok()?;
        }
        if lower.starts_with("connection:") {
            continue;
        }
        head.extend_from_slice(line.as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn forward(head: &[u8], body: &[u8], client: &mut TcpStream, upstream_port: u16) {
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    if upstream.write_all(head).is_err() || upstream.write_all(body).is_err() {
        return;
    }
    let _ = std::io::copy(&mut upstream, client);
}
