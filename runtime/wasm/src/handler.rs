//! [`Module::handle`]: a `wasi:http/proxy` handler answering one request in a
//! fresh instance, its response body streamed while the instance runs.

use std::error::Error as StdError;

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use tracing::Instrument;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use crate::error::{Error, Result};
use crate::module::{Module, ModuleKind, Pre, RequestEnv, report};

/// A handler's response body: streamed from the guest. An error means the
/// guest failed after sending the head (already counted and logged); the
/// node should cut the response short.
pub type HandlerBody = UnsyncBoxBody<Bytes, Error>;

impl Module {
    /// Answers `request` with the handler in a fresh instance.
    ///
    /// The guest runs in its own task: the returned response's body streams
    /// while the guest writes it, and the instance (with its CPU deadline and
    /// wall timeout) lives until the guest returns. The request's URI may be
    /// absolute or origin-form (then the `Host` header names the authority);
    /// its scheme is `https` only when the URI says so.
    ///
    /// # Errors
    ///
    /// Failures before the response head, as [`Error`]s of their kind
    /// (counted and logged); a handler that returns without a response, or
    /// answers with a `wasi:http` error code, is a guest error.
    pub async fn handle<B>(
        &self,
        request: http::Request<B>,
        env: &RequestEnv,
    ) -> Result<http::Response<HandlerBody>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let Pre::Handler(pre) = &self.loaded.pre else {
            return Err(self.not_a(ModuleKind::Handler));
        };
        let name = self.loaded.name.clone();
        let scheme = match request.uri().scheme_str() {
            Some("https") => Scheme::Https,
            _ => Scheme::Http,
        };
        let request = request.map(|body| body.map_err(body_error).boxed_unsync());
        let mut call = self.call(env);
        call.begin();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let resources = {
            let mut http = call.store.data_mut().http();
            http.new_incoming_request(scheme, request)
                .and_then(|req| Ok((req, http.new_response_outparam(sender)?)))
        };
        let (incoming, outparam) = match resources {
            Ok(r) => r,
            Err(e) => {
                return call.finish(Err(Error::guest(&name, format!("invalid request: {e:#}"))));
            }
        };
        let pre = pre.clone();
        let task = tokio::spawn(
            async move {
                let outcome = call
                    .run(async |store| {
                        let proxy = pre.instantiate_async(&mut *store).await?;
                        proxy
                            .wasi_http_incoming_handler()
                            .call_handle(&mut *store, incoming, outparam)
                            .await
                    })
                    .await;
                call.finish(outcome)
            }
            .in_current_span(),
        );
        let module = name.clone();
        match receiver.await {
            Ok(Ok(response)) => Ok(response.map(move |body| {
                body.map_err(move |e| Error::GuestError {
                    module: module.clone(),
                    message: format!("response body: {e}"),
                })
                .boxed_unsync()
            })),
            Ok(Err(code)) => {
                let e = Error::guest(
                    &name,
                    format!("the handler answered with error code {code:?}"),
                );
                report(self, Some(&e));
                Err(e)
            }
            Err(_) => match task.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => {
                    let e = Error::guest(&name, "the handler returned without setting a response");
                    report(self, Some(&e));
                    Err(e)
                }
                Err(join) => {
                    let e = Error::Trap {
                        module: name,
                        message: format!("handler task ended abnormally: {join}"),
                    };
                    report(self, Some(&e));
                    Err(e)
                }
            },
        }
    }
}

/// Maps the node's request body errors into `wasi:http`'s.
fn body_error<E: Into<Box<dyn StdError + Send + Sync>>>(e: E) -> wasmtime_wasi_http::Error {
    let e: Box<dyn StdError + Send + Sync> = e.into();
    match e.downcast::<hyper::Error>() {
        Ok(hyper) => wasmtime_wasi_http::Error::Hyper(*hyper),
        Err(other) => wasmtime_wasi_http::Error::InternalError(Some(other.to_string())),
    }
}
