//! One presence lookup for the prompt's chunks, beside the gateway's
//! in-flight prefix registry: the request is `cached` (some chunks are
//! stored, or being computed for a request in flight) or `fresh`. A lookup
//! that fails or that no worker can answer counts nothing as stored; it
//! never fails the request.

use std::sync::Arc;
use std::task::{Context, Poll};

use cake_engine::worker::{Classification, RequestClass};
use tower::{Layer, Service};

use super::ctx::{AppState, BoxFut, GenCtx};
use crate::admission::{InFlightPrefix, InFlightPrefixes, chunk_ids};
use crate::error::GatewayError;

#[derive(Clone)]
pub struct ClassifyLayer {
    state: Arc<AppState>,
}

impl ClassifyLayer {
    pub fn new(state: Arc<AppState>) -> ClassifyLayer {
        ClassifyLayer { state }
    }
}

impl<S> Layer<S> for ClassifyLayer {
    type Service = Classify<S>;
    fn layer(&self, inner: S) -> Classify<S> {
        Classify {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Classify<S> {
    inner: S,
    state: Arc<AppState>,
}

impl<S> Service<GenCtx> for Classify<S>
where
    S: Service<GenCtx, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = BoxFut<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut ctx: GenCtx) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let pool = self.state.pool.clone();
        let prefixes = self.state.admission.prefixes().clone();
        Box::pin(async move {
            let found = pool.classify(&ctx.prompt, &ctx.tenant.cache_group).await;
            let chunk = pool
                .slots()
                .first()
                .map(|s| s.last_load().chunk_tokens as usize)
                .filter(|&c| c > 0)
                .unwrap_or(DEFAULT_CHUNK);
            let ids = chunk_ids(&ctx.tenant.cache_group, &ctx.prompt, chunk);
            let seen = Seen::new(found.as_ref(), &prefixes, &ids, ctx.prompt.len(), chunk);
            let class = if seen.cached_tokens > 0 {
                RequestClass::Cached
            } else {
                found.and_then(|c| c.class).unwrap_or(RequestClass::Fresh)
            };
            ctx.class = class;
            ctx.cached_tokens = seen.cached_tokens;
            ctx.stored_tokens = seen.stored_tokens;
            ctx.in_flight = seen.in_flight;
            ctx.chunk_ids = ids;
            ctx.rid.meta.update(|m| m.class = Some(class));
            tracing::Span::current().record("class", class.as_str());
            inner.call(ctx).await
        })
    }
}

/// Chunk size until a worker has reported its own.
const DEFAULT_CHUNK: usize = 256;

/// What the classify step learned of a prompt's chunks.
#[derive(Debug, PartialEq)]
struct Seen {
    /// Tokens stored or being computed in flight (anywhere).
    cached_tokens: usize,
    /// Tokens stored.
    stored_tokens: usize,
    /// The worker computing the most of the rest now.
    in_flight: Option<InFlightPrefix>,
}

impl Seen {
    fn new(
        found: Option<&Classification>,
        prefixes: &InFlightPrefixes,
        ids: &[crate::admission::ChunkId],
        prompt_len: usize,
        chunk: usize,
    ) -> Seen {
        // Never the chunk holding the last token: it is always computed.
        let cap = (prompt_len.saturating_sub(1) / chunk).min(ids.len());
        let workers = prefixes.workers(&ids[..cap]);
        let stored = |i: usize| found.is_some_and(|c| c.stored.get(i) == Some(&true));
        let reported = found.map_or(0, |c| c.cached_tokens);
        let stored_tokens = match found {
            Some(c) if !c.stored.is_empty() => (0..cap).filter(|&i| stored(i)).count() * chunk,
            _ => reported,
        };
        let mut best: Option<(usize, usize)> = None;
        for w in workers.iter().flatten() {
            let n = (0..cap)
                .filter(|&i| stored(i) || workers[i] == Some(*w))
                .count();
            if best.is_none_or(|(_, m)| n > m) {
                best = Some((*w, n));
            }
        }
        let anywhere = (0..cap)
            .filter(|&i| stored(i) || workers[i].is_some())
            .count()
            * chunk;
        Seen {
            // The worker's answer counts what it computes now as well.
            cached_tokens: anywhere.max(reported),
            stored_tokens,
            in_flight: best.map(|(worker, n)| InFlightPrefix {
                worker,
                cached_tokens: n * chunk,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;

    fn classification(stored: &[bool], chunk: usize) -> Classification {
        let n = stored.iter().filter(|&&s| s).count();
        Classification {
            class: Some(if n > 0 {
                RequestClass::Cached
            } else {
                RequestClass::Fresh
            }),
            stored: stored.to_vec(),
            cached_tokens: n * chunk,
        }
    }

    #[test]
    fn chunks_in_flight_count_as_cached_and_name_their_worker() {
        let prefixes = Arc::new(InFlightPrefixes::default());
        let prompt: Vec<u32> = (0..41).collect();
        let ids = chunk_ids("g", &prompt, 8);
        assert_eq!(ids.len(), 5);
        let found = classification(&[true, false, false, false, false], 8);

        // Nothing in flight: only the stored chunk.
        let seen = Seen::new(Some(&found), &prefixes, &ids, prompt.len(), 8);
        assert_eq!((seen.cached_tokens, seen.stored_tokens), (8, 8));
        assert_eq!(seen.in_flight, None);

        // Worker 1 computes chunks 0..3 for a request in flight.
        let _guard = prefixes.register(ids[..3].to_vec(), 1);
        let seen = Seen::new(Some(&found), &prefixes, &ids, prompt.len(), 8);
        assert_eq!((seen.cached_tokens, seen.stored_tokens), (24, 8));
        let there = InFlightPrefix {
            worker: 1,
            cached_tokens: 24,
        };
        assert_eq!(seen.in_flight, Some(there));

        // No worker answered: what is in flight still counts.
        let seen = Seen::new(None, &prefixes, &ids, prompt.len(), 8);
        assert_eq!((seen.cached_tokens, seen.stored_tokens), (24, 0));
    }

    #[test]
    fn the_last_tokens_chunk_never_counts() {
        let prefixes = Arc::new(InFlightPrefixes::default());
        let prompt: Vec<u32> = (0..16).collect();
        let ids = chunk_ids("g", &prompt, 8);
        let _guard = prefixes.register(ids.clone(), 0);
        let seen = Seen::new(None, &prefixes, &ids, prompt.len(), 8);
        assert_eq!(seen.cached_tokens, 8, "chunk 1 holds the last token");
    }
}
