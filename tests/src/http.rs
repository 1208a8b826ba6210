//! A deliberately small blocking HTTP/1.1 client and a sample app server.
//!
//! The client is blocking on purpose: inside a network namespace the socket
//! must be created on a thread that joined it, and a plain `TcpStream` is
//! the simplest thing that does so.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on `addr`, with `Host: host`. When `absolute` is set the
/// request line carries the full URL, as clients do through a forward proxy.
pub fn get(addr: SocketAddr, host: &str, path: &str, absolute: bool) -> anyhow::Result<Response> {
    get_with(addr, host, path, absolute, &[])
}

/// [`get`] with extra request headers.
pub fn get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    absolute: bool,
    headers: &[(&str, &str)],
) -> anyhow::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let target = if absolute {
        format!("http://{host}{path}")
    } else {
        path.to_string()
    };
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshd-tests\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the response from {addr}"))?;
    parse(&raw).with_context(|| format!("response from {addr}"))
}

/// A keep-alive HTTP/1.1 connection for sending many requests fast: one
/// TCP connection (and so one pass through traffic capture) for all of
/// them, reopened when the server closes it. Create and use it on a thread
/// inside the caller's network namespace.
pub struct Connection {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl Connection {
    pub fn new(addr: SocketAddr) -> Connection {
        Connection { addr, stream: None }
    }

    /// `GET path` with `Host: host` and `headers` on the open connection
    /// (opening one when there is none).
    pub fn get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        let reused = self.stream.is_some();
        match self.exchange(host, path, headers) {
            // A connection the server closed while idle fails on first use
            // without an answer: the request never arrived, so send it
            // once more on a fresh connection.
            Err(e) if reused && e.downcast_ref::<Unanswered>().is_some() => {
                self.exchange(host, path, headers)
            }
            other => other,
        }
    }

    fn exchange(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        let result = self.try_exchange(host, path, headers);
        if result.as_ref().map_or(true, |r| {
            r.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        }) {
            self.stream = None;
        }
        result
    }

    fn try_exchange(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        if self.stream.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
                .with_context(|| format!("connecting to {}", self.addr))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.set_nodelay(true)?;
            self.stream = Some(BufReader::new(stream));
        }
        let reader = self.stream.as_mut().expect("connected above");
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshd-tests\r\n{extra}\r\n"
        );
        reader
            .get_mut()
            .write_all(request.as_bytes())
            .map_err(|_| Unanswered)?;
        read_response(reader)
    }
}

/// The server closed the connection before answering.
#[derive(Debug)]
struct Unanswered;

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the connection closed before a response")
    }
}

impl std::error::Error for Unanswered {}

/// One response from a keep-alive connection: the head, then a body of
/// Content-Length bytes or chunks.
fn read_response(reader: &mut BufReader<TcpStream>) -> anyhow::Result<Response> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => return Err(Unanswered.into()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            return Err(Unanswered.into());
        }
        Err(e) => return Err(e).context("reading the status line"),
        Ok(_) => {}
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line: {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16)
                .with_context(|| format!("bad chunk size {line:?}"))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = find("content-length") {
        let length: usize = length.parse().context("bad content-length")?;
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

fn parse(raw: &[u8]) -> anyhow::Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no complete HTTP response ({} bytes)", raw.len());
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A sample application: answers every request with its own name, then the
/// request line and the request headers it saw, one per line, so a test can
/// tell which server answered, which path it was asked for and what the
/// proxies added on the way.
pub struct App {
    pub name: String,
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
}

impl App {
    /// Serves on `listener` (already bound, possibly inside a network
    /// namespace) from a background thread for the life of the process.
    pub fn serve(name: &str, listener: TcpListener) -> anyhow::Result<App> {
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let me = name.to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let me = me.clone();
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let _ = answer(&me, stream, &counter);
                });
            }
        });
        Ok(App {
            name: name.to_string(),
            addr,
            requests,
        })
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

fn answer(name: &str, mut stream: TcpStream, counter: &AtomicU64) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    // Serve keep-alive connections: Envoy reuses its upstream connections.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end + 4);
        counter.fetch_add(1, Ordering::Relaxed);
        // The request line second, so a test sees the path the app was
        // asked for (after any rewrite on the way); the first line stays
        // the app's name.
        let mut body = format!("hello from {name}\n");
        for line in head.lines() {
            body.push_str(line);
            body.push('\n');
        }
        let close = head.to_ascii_lowercase().contains("connection: close");
        // `GET /status/503` is answered with that status, so a test can
        // make an app fail on purpose.
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|path| path.strip_prefix("/status/"))
            .and_then(|code| code.parse::<u16>().ok())
            .filter(|code| (200..600).contains(code))
            .unwrap_or(200);
        // One write: `write!` on the socket sends each piece on its own,
        // and on a keep-alive connection Nagle's algorithm then holds the
        // rest of the response for the peer's delayed ACK (40 ms).
        let response = format!(
            "HTTP/1.1 {status} Status\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Served-By: {name}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        stream.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}
