//! `bench-wasi-hello`: answers every request with `200`, `content-type: text/plain` and the
//! fixed body [`BODY`] — the hello handler of the `wasmtime serve` comparison. It imports
//! `wasi:http/proxy` and what Rust's `std` adds (`wasi:cli/environment` and friends, hence
//! `wasmtime serve -S cli=y`), nothing of Cathedral's, so both runtimes run this same file.

#![deny(unsafe_code)]

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// The response body (31 bytes); the ceiling origin of the scenario serves as many bytes.
pub const BODY: &[u8] = b"hello from a wasi:http handler\n";

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let headers = Fields::from_list(&[("content-type".to_owned(), b"text/plain".to_vec())])
            .unwrap_or_else(|_| Fields::new());
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else {
            return;
        };
        ResponseOutparam::set(out, Ok(response));
        if let Ok(stream) = body.write() {
            // BODY is far below the 4096 bytes a blocking write may carry at once.
            let _ = stream.blocking_write_and_flush(BODY);
            drop(stream);
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

wasip2::http::proxy::export!(Hello);
