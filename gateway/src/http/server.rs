//! The accept loop: one task per connection, HTTP/1.1 and HTTP/2, a
//! header read timeout (a stalled client is disconnected, never held),
//! and a handle that stops accepting when dropped, shut down or drained
//! (see [`ServerHandle::drain`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Body;
use super::drain::{CutService, Cutoff, DrainSignal};

/// How long connections get after the drain deadline to send the last
/// frames the cut wrote (an error event, `[DONE]`).
const AFTER_CUT: Duration = Duration::from_secs(2);

/// How a drain ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections still open at the deadline (their requests were cut).
    pub cut_connections: usize,
    /// Connections still open after the cut had its grace too.
    pub left_open: usize,
}

/// A running server. Dropping it stops accepting new connections;
/// connections already open finish what they are doing.
pub struct ServerHandle {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    signal: DrainSignal,
    task: Option<tokio::task::JoinHandle<GracefulShutdown>>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits for the accept loop to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Stops accepting (the listener is closed, so new connections are
    /// refused; idle keep-alive connections close), lets requests in
    /// flight finish for up to `timeout`, then ends what is left: a
    /// request without an answer gets the cutoff response, a stream its
    /// last frame.
    pub async fn drain(mut self, timeout: Duration) -> DrainReport {
        self.signal.draining();
        let _ = self.stop.send(true);
        let Some(task) = self.task.take() else {
            return DrainReport::default();
        };
        let Ok(graceful) = task.await else {
            return DrainReport::default();
        };
        let mut report = DrainReport::default();
        let open = graceful.count();
        let all_closed = graceful.shutdown();
        tokio::pin!(all_closed);
        if tokio::time::timeout(timeout, &mut all_closed).await.is_ok() {
            return report;
        }
        report.cut_connections = open;
        self.signal.cut();
        if tokio::time::timeout(AFTER_CUT, &mut all_closed)
            .await
            .is_err()
        {
            report.left_open = open;
        }
        report
    }

    /// Runs until the accept loop ends (it does not on its own).
    pub async fn wait(mut self) {
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Serves `service` on `listener`; `signal` drives its drain, `cutoff`
/// says what the drain deadline sends.
pub fn serve<S>(
    listener: TcpListener,
    service: S,
    read_timeout: Duration,
    signal: DrainSignal,
    cutoff: Cutoff,
) -> std::io::Result<ServerHandle>
where
    S: tower::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = watch::channel(false);
    let service = CutService::new(service, signal.state(), cutoff);
    let task = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stopped.changed() => return graceful,
            };
            let (stream, _) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let svc = TowerToHyperService::new(service.clone());
            let mut b = auto::Builder::new(TokioExecutor::new());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout);
            b.http2().timer(TokioTimer::new());
            let conn = b.serve_connection(TokioIo::new(stream), svc).into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
    });
    Ok(ServerHandle {
        addr,
        stop,
        signal,
        task: Some(task),
    })
}
