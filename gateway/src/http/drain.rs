//! Draining a server: stop accepting, let requests in flight finish, and
//! at the deadline end what is left the way its client can read — an
//! error response for a request still waiting for its answer, a last
//! frame (an error event, then the end marker) for a stream.
//!
//! Every response passes through [`CutService`] on its way to the
//! connection, so the cut needs no help from the layers that made it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::Frame;
use tokio::sync::watch;

use super::Body;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Not accepting; requests in flight run on.
    Draining,
    /// The drain deadline passed: what is left ends now.
    Cut,
}

/// The side that moves a server through its shutdown; made before the
/// service so the service can hold a [`DrainState`].
pub struct DrainSignal {
    tx: watch::Sender<Phase>,
}

impl Default for DrainSignal {
    fn default() -> Self {
        DrainSignal::new()
    }
}

impl DrainSignal {
    pub fn new() -> DrainSignal {
        DrainSignal {
            tx: watch::channel(Phase::Serving).0,
        }
    }

    /// A view for the service (`/health` answers 503 while draining).
    pub fn state(&self) -> DrainState {
        DrainState {
            rx: self.tx.subscribe(),
        }
    }

    pub(super) fn draining(&self) {
        self.tx.send_replace(Phase::Draining);
    }

    pub(super) fn cut(&self) {
        self.tx.send_replace(Phase::Cut);
    }
}

/// Whether the server is draining; cheap to clone.
#[derive(Clone)]
pub struct DrainState {
    rx: watch::Receiver<Phase>,
}

impl DrainState {
    /// True from the shutdown signal on.
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow() != Phase::Serving
    }

    /// Resolves at the drain deadline; never, while the server runs (or
    /// once its handle is gone without draining).
    async fn cut(mut self) {
        if self.rx.wait_for(|p| *p == Phase::Cut).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What a server sends for what the deadline cuts: the response to a
/// request that has none yet, and the last frame of a streamed body
/// (chosen by its headers; `None` leaves a body alone — a body already
/// in memory finishes on its own).
#[derive(Clone, Copy)]
pub struct Cutoff {
    pub response: fn() -> Response<Body>,
    pub tail: fn(&HeaderMap) -> Option<Bytes>,
}

/// Wraps a service so the drain deadline can end its responses.
#[derive(Clone)]
pub struct CutService<S> {
    inner: S,
    state: DrainState,
    cutoff: Cutoff,
}

impl<S> CutService<S> {
    pub fn new(inner: S, state: DrainState, cutoff: Cutoff) -> CutService<S> {
        CutService {
            inner,
            state,
            cutoff,
        }
    }
}

/// `body`, ended with `tail` at the deadline. Frames are whole events,
/// so the tail never lands inside one.
fn cut_body(body: Body, state: DrainState, tail: Bytes) -> Body {
    let mut frames = BodyStream::new(body).take_until(Box::pin(state.cut()));
    let mut tail = Some(tail);
    let s = futures::stream::poll_fn(move |cx| {
        match frames.poll_next_unpin(cx) {
            Poll::Ready(None) if frames.take_result().is_some() => {
                // Cut: the rest of the body (and the work feeding it) is
                // dropped with `frames`; the client reads why.
                Poll::Ready(tail.take().map(|t| Ok::<_, Infallible>(Frame::data(t))))
            }
            other => other,
        }
    });
    StreamBody::new(s).boxed_unsync()
}

impl<S, B> tower::Service<Request<B>> for CutService<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        let state = self.state.clone();
        let cutoff = self.cutoff;
        Box::pin(async move {
            let resp = tokio::select! {
                r = fut => r?,
                _ = state.clone().cut() => return Ok((cutoff.response)()),
            };
            let Some(tail) = (cutoff.tail)(resp.headers()) else {
                return Ok(resp);
            };
            let (parts, body) = resp.into_parts();
            Ok(Response::from_parts(parts, cut_body(body, state, tail)))
        })
    }
}
