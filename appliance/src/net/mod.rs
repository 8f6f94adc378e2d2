//! The network layer: the accept loop (connection caps, the TLS handshake under the header
//! timeout), the lean HTTP/1.1 loop, answers awaited outside the router's layers (long polls),
//! zero-copy file bodies on plain TCP, TLS configuration, and per-route request limits.

pub(crate) mod activation;
pub(crate) mod connections;
pub(crate) mod http1;
pub(crate) mod later;
pub(crate) mod limits;
pub(crate) mod sendfile;
pub(crate) mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

/// Tells browsers not to guess content types, on every response (a scanner's rule; agents are
/// not browsers, but operators may open the mirror in one).
pub(crate) async fn nosniff(mut response: axum::response::Response) -> axum::response::Response {
    response
        .headers_mut()
        .insert("x-content-type-options", axum::http::HeaderValue::from_static("nosniff"));
    response
}

/// Serves `app` on an already-bound listener until `shutdown` resolves, over TLS when `tls` is
/// given, with our own lean HTTP/1.1 loop ([`crate::net::http1`]). Each connection runs on its own
/// task. The header timeout also bounds the TLS handshake.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: crate::net::http1::ConnLimits,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let header_timeout = limits.header_timeout;
    let connections = crate::net::connections::process();
    let mut last_warning: Option<tokio::time::Instant> = None;
    let mut last_refusal: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        // A place first: at the cap, new connections wait in the backlog, not in a descriptor.
        let place = tokio::select! {
            place = connections.place() => place,
            () = &mut shutdown => return Ok(()),
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning, and say
                    // so once a minute rather than 20 times a second.
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        tracing::warn!(error = %e, "accept failed (repeats are not logged for a minute)");
                        last_warning = Some(tokio::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let peer_ip = peer.ip().to_canonical();
        let Some(admitted) = connections.admit(peer_ip, place) else {
            // Closed at once: this address holds its share of the connections already. Said
            // once a minute: agents behind a NAT address that reaches its share need
            // `server.max_connections_per_address` raised (an agent refused so cannot enroll).
            if last_refusal.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                tracing::warn!(
                    address = %peer_ip,
                    per_address = connections.per_address,
                    "connections refused: this address holds its share (server.max_connections_per_address); repeats are not logged for a minute"
                );
                last_refusal = Some(tokio::time::Instant::now());
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, limits) = (app.clone(), limits.clone());
        // Two kinds of task, each sized to its own connection: a plain one does not carry
        // the room a TLS session needs.
        match acceptor.clone() {
            Some(acceptor) => tokio::spawn(async move {
                let _admitted = admitted;
                match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        log_end(
                            peer,
                            crate::net::http1::serve(tls, app, limits, Some(peer_ip)).await,
                        );
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }),
            None => tokio::spawn(async move {
                let _admitted = admitted;
                log_end(peer, crate::net::http1::serve(stream, app, limits, Some(peer_ip)).await);
            }),
        };
    }
}

/// Clients end connections in every way (debug); a response that broke its own framing is
/// this server's bug (warn).
fn log_end(peer: std::net::SocketAddr, result: Result<(), crate::net::http1::ConnError>) {
    match result {
        Ok(()) => {}
        Err(e @ crate::net::http1::ConnError::BodyLength { .. }) => {
            tracing::warn!(%peer, error = %e, "connection ended: a response broke its framing");
        }
        Err(e) => tracing::debug!(%peer, error = %e, "connection ended"),
    }
}
