//! The scrape endpoint: `GET /metrics` over HTTP/1.1 on a TCP or Unix socket, one task per connection.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Levels, Listen, metrics};

/// Reads the levels for a scrape (blocking: it takes the mounts' locks briefly).
pub type ReadLevels = Arc<dyn Fn() -> Levels + Send + Sync>;

/// Serves the metrics at `listen` until the process ends. Binding fails at once (an address in use, a socket
/// another process serves); a failing connection is logged and the others go on.
pub async fn serve(listen: &Listen, levels: ReadLevels) -> std::io::Result<tokio::task::JoinHandle<()>> {
    Ok(match listen {
        Listen::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!(listen = %addr, "serving metrics");
            tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((stream, _)) => connection(stream, levels.clone()),
                        Err(e) => accept_failed(e).await,
                    }
                }
            })
        }
        Listen::Unix(path) => {
            // A socket an earlier cafsd left is replaced; one another process serves is not.
            let l = crate::socket::bind_unix(path)?;
            l.set_nonblocking(true)?;
            let l = tokio::net::UnixListener::from_std(l)?;
            tracing::info!(listen = %path.display(), "serving metrics");
            tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((stream, _)) => connection(stream, levels.clone()),
                        Err(e) => accept_failed(e).await,
                    }
                }
            })
        }
    })
}

/// Out of fds, say: wait a little rather than spin.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "metrics: accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S, levels: ReadLevels) {
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| answer(req, levels.clone()));
        if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
        {
            tracing::debug!(error = %e, "metrics: connection ended");
        }
    });
}

async fn answer(req: Request<hyper::body::Incoming>, levels: ReadLevels) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, kind: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(kind));
        Ok(r)
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "cafsd serves /metrics only\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET /metrics\n".into());
    }
    // Reading the mounts' levels takes their locks briefly; keep it off the async workers' hot path.
    let text = tokio::task::spawn_blocking(move || metrics().render(Some(&levels()))).await.unwrap_or_default();
    reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", text)
}
