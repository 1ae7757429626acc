//! An engine in the gateway's own process.

use cake_engine::worker::{Classification, Engine, LoadReport, WorkRequest};
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{EventStream, Worker, WorkerError};
use crate::config::WorkerKind;

/// A [`Worker`] over [`Engine`]: submit, classify and load call it
/// directly; dropping the event stream drops the engine's receiver, which
/// cancels the request.
pub struct EmbeddedWorker {
    name: String,
    engine: Engine,
}

impl EmbeddedWorker {
    pub fn new(engine: Engine) -> EmbeddedWorker {
        EmbeddedWorker {
            name: engine.name().to_string(),
            engine,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Worker for EmbeddedWorker {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> WorkerKind {
        WorkerKind::Embedded
    }

    fn submit(&self, req: WorkRequest) -> BoxFuture<'static, Result<EventStream, WorkerError>> {
        let res = self
            .engine
            .submit(req)
            .map_err(WorkerError::from)
            .map(|mut rx| {
                let s: EventStream = Box::pin(futures::stream::poll_fn(move |cx| {
                    rx.poll_recv(cx).map(|ev| ev.map(Ok))
                }));
                s
            });
        futures::future::ready(res).boxed()
    }

    fn classify(
        &self,
        prompt: Vec<u32>,
        cache_group: String,
    ) -> BoxFuture<'static, Result<Classification, WorkerError>> {
        let engine = self.engine.clone();
        async move { Ok(engine.classify(&prompt, &cache_group).await) }.boxed()
    }

    fn load(&self) -> BoxFuture<'static, Result<LoadReport, WorkerError>> {
        futures::future::ready(Ok(self.engine.load_report())).boxed()
    }

    fn health(&self) -> BoxFuture<'static, Result<(), WorkerError>> {
        futures::future::ready(Ok(())).boxed()
    }

    fn flush(&self) -> BoxFuture<'static, ()> {
        let store = self.engine.store().cloned();
        async move {
            if let Some(s) = store {
                s.flush().await;
            }
        }
        .boxed()
    }
}
