//! A scripted API server for tests that expect the client's requests one by
//! one: a real `kube::Client` over `tower_test::mock::pair`, each request
//! taken by the test ([`Api::next`]) and answered in the real wire format.
//! Used by the Event recorder and route status tests; each adds its own
//! `expect_*` steps.

#![allow(dead_code)]

use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use tokio::time::timeout;
use tower_test::mock;

pub type Handle = mock::Handle<Request<kube::client::Body>, Response<Full<Bytes>>>;
pub type Respond = mock::SendResponse<Response<Full<Bytes>>>;

/// A generous bound on any one exchange: never a performance assertion.
pub const WAIT: Duration = Duration::from_secs(15);

/// The API server side: each request is taken and answered by the test.
pub struct Api {
    pub handle: Handle,
}

pub fn client() -> (kube::Client, Api) {
    let (service, handle) = mock::pair::<Request<kube::client::Body>, Response<Full<Bytes>>>();
    (kube::Client::new(service, "default"), Api { handle })
}

pub fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

/// A `Status` failure with `code` and `reason`, as the API server sends it.
pub fn api_error(code: u16, reason: &str) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::from_u16(code).expect("a status code"),
        &json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                "reason": reason, "code": code, "message": reason}),
    )
}

/// A request's body as JSON.
pub async fn body_json(request: Request<kube::client::Body>) -> Value {
    let body = request
        .into_body()
        .collect()
        .await
        .expect("the request body")
        .to_bytes();
    serde_json::from_slice(&body).expect("a JSON body")
}

impl Api {
    /// The next request, within [`WAIT`].
    pub async fn next(&mut self) -> (Request<kube::client::Body>, Respond) {
        timeout(WAIT, self.handle.next_request())
            .await
            .expect("a request in time")
            .expect("the client is alive")
    }
}
