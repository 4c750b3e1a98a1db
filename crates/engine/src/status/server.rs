//! The metrics listener (`metrics.prometheusEnabled`): `prometheusPath` serves the Prometheus
//! text, `/status.json` the status document, `/` the status page. Plain HTTP/1.1 on its own
//! address (127.0.0.1 by default), on the engine's runtime, closed by `stop()`.

use super::View;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The status page: one self-contained document (no external assets).
const PAGE: &str = include_str!("page.html");

pub struct Settings {
    pub path: String,
    pub prefix: String,
}

/// Binds the listener's address (before the proxy commits to starting).
pub fn bind(host: &str, port: u16) -> std::io::Result<std::net::TcpListener> {
    let ip: std::net::IpAddr = host.parse().map_err(|_| std::io::Error::other(format!("not an IP address: {host}")))?;
    let l = std::net::TcpListener::bind((ip, port))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

fn answer(view: &View, s: &Settings, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, kind: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
        r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    let path = req.uri().path();
    if path == s.path {
        reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", super::prometheus::render(view, &s.prefix))
    } else if path == "/status.json" {
        reply(StatusCode::OK, "application/json", view.status_json().to_string())
    } else if path == "/" {
        reply(StatusCode::OK, "text/html; charset=utf-8", PAGE.to_owned())
    } else {
        reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into())
    }
}

/// Serves until `shutdown`.
pub async fn serve(listener: std::net::TcpListener, view: View, settings: Settings, shutdown: CancellationToken) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
    let shared = Arc::new((view, settings));
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared.0, &shared.1, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}
