//! One presence lookup for the prompt's chunks, beside the gateway's
//! in-flight prefix registry: the request is `cached` (some chunks are
//! stored, or being computed for a request in flight) or `fresh`. A lookup
//! that fails or that no worker can answer counts nothing as stored; it
//! never fails the request.

use std::sync::Arc;
use std::task::{Context, Poll};

use cake_engine::worker::{Classification, RequestClass};
use tower::{Service, ServiceExt};

use super::ctx::{BoxFut, Classified, Tokenized};
use crate::admission::{Admission, InFlightPrefixes, PrefixChunks, chunk_ids};
use crate::error::GatewayError;
use crate::worker::WorkerPool;

/// [`Tokenized`] in, [`Classified`] to the inner service.
#[derive(Clone)]
pub struct Classify<S> {
    inner: S,
    /// Asked which chunks are stored.
    pool: Arc<WorkerPool>,
    /// For its in-flight prefix registry.
    admission: Arc<Admission>,
}

impl<S> Classify<S> {
    pub fn new(inner: S, pool: Arc<WorkerPool>, admission: Arc<Admission>) -> Classify<S> {
        Classify {
            inner,
            pool,
            admission,
        }
    }
}

/// The prompt's class and what of it is stored or in flight.
async fn classify(pool: &WorkerPool, admission: &Admission, ctx: Tokenized) -> Classified {
    let found = pool.classify(&ctx.prompt, &ctx.tenant.cache_group).await;
    // The chunk size the worker said, or its last report's.
    let chunk = found
        .as_ref()
        .map(|c| c.chunk_tokens)
        .filter(|&c| c > 0)
        .or_else(|| {
            let c = pool.slots().first()?.last_load().chunk_tokens as usize;
            (c > 0).then_some(c)
        })
        .unwrap_or(DEFAULT_CHUNK);
    let chunks = prefix_chunks(found.as_ref(), &ctx.tenant.cache_group, &ctx.prompt, chunk);
    let seen = Seen::new(found.as_ref(), admission.prefixes(), &chunks);
    let class = if seen.cached_tokens > 0 {
        RequestClass::Cached
    } else {
        found.and_then(|c| c.class).unwrap_or(RequestClass::Fresh)
    };
    ctx.rid.meta.update(|m| m.class = Some(class));
    tracing::Span::current().record("class", class.as_str());
    Classified {
        tokenized: ctx,
        class,
        cached_tokens: seen.cached_tokens,
        stored_tokens: seen.stored_tokens,
        chunks,
    }
}

impl<S> Service<Tokenized> for Classify<S>
where
    S: Service<Classified, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = BoxFut<S::Response>;

    /// Always ready: the inner service is readied for each request by
    /// `oneshot`, on its own clone.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ctx: Tokenized) -> Self::Future {
        let inner = self.inner.clone();
        let (pool, admission) = (self.pool.clone(), self.admission.clone());
        Box::pin(async move { inner.oneshot(classify(&pool, &admission, ctx).await).await })
    }
}

/// Chunk size until a worker has reported its own.
const DEFAULT_CHUNK: usize = 256;

/// The prompt's chunks as the in-flight prefix registry names them, with
/// which are stored.
fn prefix_chunks(
    found: Option<&Classification>,
    cache_group: &str,
    prompt: &[u32],
    chunk: usize,
) -> PrefixChunks {
    let ids = chunk_ids(cache_group, prompt, chunk);
    PrefixChunks {
        // Never the chunk holding the last token: it is always computed.
        cap: (prompt.len().saturating_sub(1) / chunk).min(ids.len()),
        stored: (0..ids.len())
            .map(|i| found.is_some_and(|c| c.stored.get(i) == Some(&true)))
            .collect(),
        ids,
        chunk_tokens: chunk,
    }
}

/// What the classify step learned of a prompt's chunks.
#[derive(Debug, PartialEq)]
struct Seen {
    /// Tokens stored or being computed in flight (anywhere).
    cached_tokens: usize,
    /// Tokens stored.
    stored_tokens: usize,
}

impl Seen {
    fn new(found: Option<&Classification>, prefixes: &InFlightPrefixes, c: &PrefixChunks) -> Seen {
        let workers = prefixes.workers(&c.ids[..c.cap]);
        let reported = found.map_or(0, |f| f.cached_tokens);
        let stored_tokens = match found {
            Some(f) if !f.stored.is_empty() => {
                (0..c.cap).filter(|&i| c.stored[i]).count() * c.chunk_tokens
            }
            _ => reported,
        };
        let anywhere = (0..c.cap)
            .filter(|&i| c.stored[i] || workers[i].is_some())
            .count()
            * c.chunk_tokens;
        Seen {
            // The worker's answer counts what it computes now as well.
            cached_tokens: anywhere.max(reported),
            stored_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::super::fixture::{echo, fleet, tokenized};
    use super::*;
    use crate::config::PolicyConfig;

    async fn call(pool: &Arc<WorkerPool>, adm: &Arc<Admission>, prompt: &[u32]) -> Classified {
        Classify::new(echo::<Classified>(), pool.clone(), adm.clone())
            .oneshot(tokenized(prompt))
            .await
            .unwrap()
    }

    /// The layer asks the workers, then counts what is in flight as well.
    #[tokio::test]
    async fn stored_and_in_flight_chunks_make_a_request_cached() {
        let (mocks, pool, adm) = fleet(1, &PolicyConfig::default());
        let prompt: Vec<u32> = (0..40).collect();
        let c = call(&pool, &adm, &prompt).await;
        assert_eq!(
            (c.class, c.cached_tokens, c.stored_tokens),
            (RequestClass::Fresh, 0, 0)
        );
        assert_eq!(c.chunks.chunk_tokens, 16, "the worker's chunk size");

        mocks[0].store_prompt(&prompt[..16], "default");
        let c = call(&pool, &adm, &prompt).await;
        assert_eq!(
            (c.class, c.cached_tokens, c.stored_tokens),
            (RequestClass::Cached, 16, 16)
        );
        assert_eq!(c.chunks.stored, vec![true, false]);

        let _computing = adm.prefixes().register(c.chunks.ids.clone(), 0);
        let c = call(&pool, &adm, &prompt).await;
        assert_eq!((c.cached_tokens, c.stored_tokens), (32, 16));
    }

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
            chunk_tokens: chunk,
        }
    }

    #[test]
    fn chunks_in_flight_count_as_cached() {
        let prefixes = Arc::new(InFlightPrefixes::default());
        let prompt: Vec<u32> = (0..41).collect();
        let found = classification(&[true, false, false, false, false], 8);
        let chunks = prefix_chunks(Some(&found), "g", &prompt, 8);
        assert_eq!((chunks.ids.len(), chunks.cap), (5, 5));

        // Nothing in flight: only the stored chunk.
        let seen = Seen::new(Some(&found), &prefixes, &chunks);
        assert_eq!((seen.cached_tokens, seen.stored_tokens), (8, 8));

        // Worker 1 computes chunks 0..3 for a request in flight.
        let _guard = prefixes.register(chunks.ids[..3].to_vec(), 1);
        let seen = Seen::new(Some(&found), &prefixes, &chunks);
        assert_eq!((seen.cached_tokens, seen.stored_tokens), (24, 8));

        // No worker answered: what is in flight still counts.
        let chunks = prefix_chunks(None, "g", &prompt, 8);
        let seen = Seen::new(None, &prefixes, &chunks);
        assert_eq!((seen.cached_tokens, seen.stored_tokens), (24, 0));
    }

    #[test]
    fn the_last_tokens_chunk_never_counts() {
        let prefixes = Arc::new(InFlightPrefixes::default());
        let prompt: Vec<u32> = (0..16).collect();
        let chunks = prefix_chunks(None, "g", &prompt, 8);
        let _guard = prefixes.register(chunks.ids.clone(), 0);
        let seen = Seen::new(None, &prefixes, &chunks);
        assert_eq!(seen.cached_tokens, 8, "chunk 1 holds the last token");
    }
}
