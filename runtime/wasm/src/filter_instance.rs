//! [`FilterInstance`]: one request's instance of a filter module. Its
//! `on-request` and `on-response` run in the same store and instance while
//! the node keeps it, so a request served from the cache pays for one
//! instantiation per filter, not two; [`FilterInstance::release`] gives the
//! pool slot back before a slow wait (an origin fetch), and the next hook
//! then runs in a fresh instance.

use wasmtime::Store;

use crate::error::{Error, Result};
use crate::filter::{RequestAction, RequestHead, ResponseAction, ResponseParts};
use crate::host::bindings::Filter;
use crate::module::{Call, Module, RequestEnv};
use crate::state::StoreState;

/// A filter module's hooks for one request. Build one per filter per
/// request ([`FilterInstance::new`] allocates nothing: the instance is made
/// by the first hook). Never share one between requests: a module's
/// globals live as long as its instance.
///
/// Each hook gets the module's whole CPU deadline and wall timeout, and
/// counts as one call. After a hook fails — trap, timeout, OOM, invalid
/// answer — the instance is dropped, never entered again.
pub struct FilterInstance {
    module: Module,
    env: RequestEnv,
    live: Option<Live>,
}

/// A store with the filter instantiated in it.
struct Live {
    call: Call,
    filter: Filter,
}

impl FilterInstance {
    /// The hooks of `module` for the request described by `env`.
    pub fn new(module: &Module, env: &RequestEnv) -> Self {
        Self {
            module: module.clone(),
            env: env.clone(),
            live: None,
        }
    }

    /// Whether an instance is held (and with it a slot of the pool).
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// Drops the instance, if one is held, and frees its pool slot. Call it
    /// before waiting on anything slow; a later hook instantiates afresh.
    pub fn release(&mut self) {
        self.live = None;
    }

    /// Runs `on-request`.
    ///
    /// # Errors
    ///
    /// A trap, timeout, OOM or invalid answer, as an [`Error`] of that kind
    /// (already counted in [`Module::stats`] and logged).
    pub async fn on_request(&mut self, head: RequestHead<'_>) -> Result<RequestAction> {
        let head = head.to_wit();
        let client = self.env.client.to_wit();
        self.hook(
            async |store, filter| filter.call_on_request(store, &head, &client).await,
            RequestAction::try_from,
        )
        .await
    }

    /// Runs `on-response`. `head` is the request as the origin saw it (after
    /// request filters' edits).
    ///
    /// # Errors
    ///
    /// As [`FilterInstance::on_request`].
    pub async fn on_response(
        &mut self,
        head: RequestHead<'_>,
        response: ResponseParts<'_>,
    ) -> Result<ResponseAction> {
        let head = head.to_wit();
        let client = self.env.client.to_wit();
        let response = response.to_wit();
        self.hook(
            async |store, filter| {
                filter
                    .call_on_response(store, &head, &client, &response)
                    .await
            },
            ResponseAction::try_from,
        )
        .await
    }

    /// One hook: on the held instance, or on a new one; the answer
    /// validated by `convert`; the outcome counted and logged; the instance
    /// kept only after a success.
    async fn hook<W, R>(
        &mut self,
        f: impl AsyncFnOnce(&mut Store<StoreState>, &Filter) -> wasmtime::Result<W>,
        convert: impl FnOnce(W) -> Result<R, String>,
    ) -> Result<R> {
        let pre = self.module.filter_pre()?;
        let (mut call, mut filter) = match self.live.take() {
            Some(Live { call, filter }) => (call, Some(filter)),
            None => (self.module.call(&self.env), None),
        };
        call.begin();
        let outcome = call
            .run(async |store| {
                let filter = match &filter {
                    Some(f) => f,
                    None => filter.insert(pre.instantiate_async(&mut *store).await?),
                };
                f(store, filter).await
            })
            .await;
        let name = &self.module.loaded.name;
        let outcome = call
            .finish(outcome.and_then(|answer| convert(answer).map_err(|e| Error::guest(name, e))));
        if let (Ok(_), Some(filter)) = (&outcome, filter) {
            self.live = Some(Live { call, filter });
        }
        outcome
    }
}

impl std::fmt::Debug for FilterInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterInstance")
            .field("module", &self.module.name())
            .field("live", &self.is_live())
            .finish()
    }
}
