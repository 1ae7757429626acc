//! Placement: the worker chosen by `policy.placement`
//! ([`cake_policy::Placer`], fed with each worker's last load report plus
//! the in-flight ledger, the classify step's stored tokens and the worker
//! computing more of the prefix now) first, then the other healthy workers
//! for retries. No healthy worker is 503. The request's chunks go into the
//! in-flight prefix registry under the chosen worker until it ends.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Service, ServiceExt};

use super::ctx::{BoxFut, Holding, Placed};
use crate::admission::{Admission, PlaceRequest};
use crate::error::GatewayError;

/// [`Holding`] in, [`Placed`] to the inner service.
#[derive(Clone)]
pub struct Place<S> {
    inner: S,
    admission: Arc<Admission>,
}

impl<S> Place<S> {
    pub fn new(inner: S, admission: Arc<Admission>) -> Place<S> {
        Place { inner, admission }
    }
}

fn place(admission: &Admission, mut ctx: Holding) -> Result<Placed, GatewayError> {
    let c = &ctx.classified;
    let req = PlaceRequest {
        prompt: &c.prompt,
        cached_tokens: c.stored_tokens,
        cache_group: &c.tenant.cache_group,
        chunks: Some(&c.chunks),
    };
    let candidates = admission.place(&mut ctx.admitted, &req)?;
    Ok(Placed {
        holding: ctx,
        candidates,
    })
}

impl<S> Service<Holding> for Place<S>
where
    S: Service<Placed, Error = GatewayError> + Clone + Send + 'static,
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

    fn call(&mut self, ctx: Holding) -> Self::Future {
        let placed = place(&self.admission, ctx);
        let inner = self.inner.clone();
        Box::pin(async move { inner.oneshot(placed?).await })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::fixture::{echo, fleet, holding};
    use super::*;
    use crate::config::PolicyConfig;
    use crate::worker::WorkerError;

    fn names_of(p: &Placed) -> Vec<&str> {
        p.candidates.iter().map(|s| s.name()).collect()
    }

    /// Every healthy worker is a candidate, chosen one first; the prompt's
    /// chunks are registered under the chosen one while the request holds.
    #[tokio::test]
    async fn healthy_workers_in_order_and_the_prefix_registered() {
        let (_mocks, pool, adm) = fleet(2, &PolicyConfig::default());
        let svc = Place::new(echo::<Placed>(), adm.clone());
        let prompt: Vec<u32> = (0..40).collect();
        let p = svc
            .clone()
            .oneshot(holding(&adm, &prompt).await)
            .await
            .unwrap();
        let names = names_of(&p);
        assert_eq!(names.len(), 2, "{names:?}");
        let chosen = usize::from(names[0] == "w1");
        let ids = p.chunks.ids[..p.chunks.cap].to_vec();
        assert_eq!(adm.prefixes().workers(&ids), vec![Some(chosen); 2]);
        drop(p);
        let workers = adm.prefixes().workers(&ids);
        assert_eq!(workers, vec![None; 2], "given back with the hold");

        // A worker down is no candidate; none up is 503.
        pool.failure(&pool.slots()[0], &WorkerError::Unreachable("test".into()));
        let p = svc
            .clone()
            .oneshot(holding(&adm, &prompt).await)
            .await
            .unwrap();
        let names = names_of(&p);
        assert_eq!(names, vec!["w1"]);
        drop(p);
        // (Admitted while one was up: admission refuses with none.)
        let held = holding(&adm, &prompt).await;
        pool.failure(&pool.slots()[1], &WorkerError::Unreachable("test".into()));
        let e = svc.oneshot(held).await.err().unwrap();
        assert!(matches!(e, GatewayError::NoHealthyWorker { .. }), "{e}");
    }
}
