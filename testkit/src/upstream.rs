//! A tiny HTTP/1.1 file server on loopback for tests of clients: fixed answers by request
//! target (a synthetic copy of Elastic's download site, a package registry's `/search?…`),
//! every request recorded, resumable ranges, and a connection cut on demand.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// One request the upstream saw: method, path and `Range` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    hits: Vec<Hit>,
    /// Paths whose next response is cut after this many body bytes.
    cut: HashMap<String, usize>,
}

/// A tiny HTTP/1.1 file server on loopback.
pub struct Upstream {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl Upstream {
    pub fn start(files: HashMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/downloads/", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State { files, ..State::default() }));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        Self { url, state }
    }

    /// The server's root URL (`http://127.0.0.1:PORT/`), for clients of another layout.
    pub fn root(&self) -> String {
        self.url.trim_end_matches("downloads/").to_owned()
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.state.lock().unwrap().hits.clone()
    }

    /// Replaces (or with `None` removes) the file at `path` below `downloads/`.
    pub fn set(&self, path: &str, bytes: Option<Vec<u8>>) {
        self.set_raw(&format!("/downloads/{path}"), bytes);
    }

    /// Replaces (or with `None` removes) the answer to a request target (path and query).
    pub fn set_raw(&self, target: &str, bytes: Option<Vec<u8>>) {
        let mut state = self.state.lock().unwrap();
        match bytes {
            Some(b) => state.files.insert(target.to_owned(), b),
            None => state.files.remove(target),
        };
    }

    pub fn get(&self, path: &str) -> Vec<u8> {
        self.get_raw(&format!("/downloads/{path}"))
    }

    pub fn get_raw(&self, target: &str) -> Vec<u8> {
        self.state.lock().unwrap().files[target].clone()
    }

    /// Drops the connection after `bytes` of the body, once, for `path` below `downloads/`.
    pub fn cut_once(&self, path: &str, bytes: usize) {
        self.state.lock().unwrap().cut.insert(format!("/downloads/{path}"), bytes);
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let mut words = request.split_whitespace();
    let method = words.next().unwrap_or("GET").to_owned();
    let path = words.next().unwrap_or("/").to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_owned());
        }
    }
    let (body, cut) = {
        let mut state = state.lock().unwrap();
        state.hits.push(Hit { method: method.clone(), path: path.clone(), range: range.clone() });
        let body = state.files.get(&path).cloned();
        let cut = state.cut.remove(&path);
        (body, cut)
    };
    let mut out = stream;
    let Some(body) = body else {
        let _ = out.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
        );
        return;
    };
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let head = if start > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
            body.len() - start,
            body.len() - 1,
            body.len()
        )
    } else {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
    };
    let _ = out.write_all(head.as_bytes());
    if method == "HEAD" {
        return;
    }
    let part = &body[start..];
    let _ = out.write_all(&part[..cut.unwrap_or(part.len()).min(part.len())]);
    let _ = out.flush();
    let _ = out.shutdown(std::net::Shutdown::Both);
}
