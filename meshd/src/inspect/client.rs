//! A plain HTTP/1.1 GET against a control plane's debug port or an Envoy
//! admin interface, with errors that say what to check.

use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// How long connecting may take: a port-forward answers at once or not
/// at all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer may take (a proxy's config is asked of its stream).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest answer read (a big mesh's config dump is a few MB).
const MAX_BODY: usize = 256 << 20;

/// What the server answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// What is at an address, for error messages.
#[derive(Clone, Copy, Debug)]
pub enum Peer {
    ControlPlane,
    EnvoyAdmin,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::ControlPlane => "control plane",
            Peer::EnvoyAdmin => "Envoy admin interface",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Peer::ControlPlane => {
                "is `meshd run` listening there (its --debug-address), or is `kubectl port-forward -n meshd-system deploy/meshd 15014` running?"
            }
            Peer::EnvoyAdmin => {
                "is the proxy running, and is `kubectl port-forward POD 15000` running for a pod in a cluster?"
            }
        }
    }
}

/// `host:port` from what a user may type (`http://host:port/` too).
pub fn authority(address: &str) -> anyhow::Result<String> {
    let trimmed = address
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if trimmed.starts_with("https://") || trimmed.is_empty() || !trimmed.contains(':') {
        bail!("{address:?} is not an address; accepted: HOST:PORT (e.g. 127.0.0.1:15014)");
    }
    Ok(trimmed.to_string())
}

/// GETs `path` from `address` (`host:port`).
pub async fn get(peer: Peer, address: &str, path: &str) -> anyhow::Result<Answer> {
    let connect = tokio::net::TcpStream::connect(address);
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Err(_) => bail!(
            "no {} at {address}: no answer within {CONNECT_TIMEOUT:?}; {}",
            peer.name(),
            peer.hint()
        ),
        Ok(Err(e)) => {
            let reason = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                _ => e.to_string(),
            };
            bail!("no {} at {address}: {reason}; {}", peer.name(), peer.hint())
        }
        Ok(Ok(stream)) => stream,
    };
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, address)
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .to_bytes();
        anyhow::Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the {} at {address} did not answer GET {path} within {ANSWER_TIMEOUT:?}",
                peer.name()
            )
        })?
        .with_context(|| format!("GET http://{address}{path}"))
}

/// GETs `path` and parses it as JSON, failing on anything but 200.
pub async fn get_json(peer: Peer, address: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let answer = get(peer, address, path).await?;
    if answer.status != 200 {
        bail!(
            "{address}: GET {path}: HTTP {}: {}",
            answer.status,
            answer.body.trim()
        );
    }
    serde_json::from_str(&answer.body).with_context(|| {
        format!(
            "{address}: GET {path}: the answer is not JSON (is this a {}?)",
            peer.name()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_taken_with_or_without_a_scheme() {
        assert_eq!(authority("127.0.0.1:15014").unwrap(), "127.0.0.1:15014");
        assert_eq!(
            authority("http://localhost:15014/").unwrap(),
            "localhost:15014"
        );
        let e = authority("meshd").unwrap_err().to_string();
        assert!(e.contains("HOST:PORT"), "{e}");
    }

    #[tokio::test]
    async fn nothing_listening_says_what_to_check() {
        // A port just freed: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let e = get(Peer::ControlPlane, &addr, "/debug/xds/proxies")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("no control plane at {addr}: connection refused;")),
            "{e}"
        );
        assert!(e.contains("kubectl port-forward"), "{e}");
    }
}
