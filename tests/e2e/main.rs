//! End-to-end tests: the real node on loopback, real origins, real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod bundles;
mod cache;
mod client_addr;
mod lifecycle;
mod limits;
mod modules;
mod protocols;
mod proxy;
mod ratelimit;
mod routing;
mod static_content;
