//! Admission ([`crate::admission::Admission::admit`], which says the
//! order: tenant limits, predicted wait against the queue deadline, SLO
//! shedding, a dispatch slot or the fair queue). The request waits here
//! for its slot; what it is admitted with travels down in
//! [`Holding::admitted`].
//!
//! It admits in `call`, not `poll_ready`: which tenant's queue, which
//! share, the prompt's cost are the request's, which `poll_ready` does not
//! see.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Service, ServiceExt};

use super::ctx::{BoxFut, Classified, Holding};
use crate::admission::{Admission, AdmitRequest, PlaceRequest};
use crate::error::GatewayError;

/// [`Classified`] in, [`Holding`] to the inner service once admitted.
#[derive(Clone)]
pub struct Admit<S> {
    inner: S,
    admission: Arc<Admission>,
}

impl<S> Admit<S> {
    pub fn new(inner: S, admission: Arc<Admission>) -> Admit<S> {
        Admit { inner, admission }
    }
}

async fn admit(admission: &Admission, ctx: Classified) -> Result<Holding, GatewayError> {
    let req = AdmitRequest {
        tenant: &ctx.tenant.name,
        entry: ctx.tenant.entry.as_deref(),
        place: PlaceRequest {
            prompt: &ctx.prompt,
            cached_tokens: ctx.cached_tokens,
            cache_group: &ctx.tenant.cache_group,
            chunks: None,
        },
    };
    let admitted = admission.admit(&req).await?;
    Ok(Holding {
        classified: ctx,
        admitted,
    })
}

impl<S> Service<Classified> for Admit<S>
where
    S: Service<Holding, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = BoxFut<S::Response>;

    /// Always ready: the request waits for its slot in `call` (see the
    /// module's doc); the inner service is readied by `oneshot`.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ctx: Classified) -> Self::Future {
        let inner = self.inner.clone();
        let admission = self.admission.clone();
        Box::pin(async move { inner.oneshot(admit(&admission, ctx).await?).await })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::super::fixture::{classified, echo, fleet};
    use super::*;
    use crate::config::PolicyConfig;

    /// The hold travels down and is the dispatch slot: while the first
    /// response is held, a second request waits; dropping it lets the
    /// second through.
    #[tokio::test(start_paused = true)]
    async fn the_hold_is_the_slot_until_the_response_drops() {
        let policy = PolicyConfig {
            max_concurrent: 1,
            ..PolicyConfig::default()
        };
        let (_mocks, _pool, adm) = fleet(1, &policy);
        let svc = Admit::new(echo::<Holding>(), adm.clone());
        let first = svc.clone().oneshot(classified(&[1, 2, 3])).await.unwrap();
        assert_eq!(first.prompt, vec![1, 2, 3]);

        let mut second = tokio::spawn(svc.oneshot(classified(&[4, 5])));
        // Paused time moves on only once every task waits.
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut second).await;
        assert!(waited.is_err(), "waits for the one slot");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(second.prompt, vec![4, 5]);
    }
}
