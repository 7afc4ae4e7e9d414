//! `cathedral:edge/client-info`: who is asking ([`ClientInfo`]), as the node
//! determined it for this request.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use crate::host::bindings::cathedral::edge::client_info;
use crate::host::bindings::cathedral::edge::types;
use crate::state::StoreState;

/// The client of one request. The node fills it once per request; filters
/// get it as their `client` argument and through `client-info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address (from the connection, or a trusted proxy).
    pub ip: IpAddr,
    /// ISO 3166-1 alpha-2 country code, upper-case, when known.
    pub country: Option<String>,
    /// The answering edge's region id (one `Arc` per node).
    pub region: Arc<str>,
    /// The user id the route derived, if any.
    pub user_id: Option<String>,
}

impl Default for ClientInfo {
    fn default() -> Self {
        Self {
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            country: None,
            region: Arc::from(""),
            user_id: None,
        }
    }
}

impl ClientInfo {
    pub(crate) fn to_wit(&self) -> types::Client {
        types::Client {
            ip: self.ip.to_string(),
            country: self.country.clone(),
            region: self.region.to_string(),
            user_id: self.user_id.clone(),
        }
    }
}

impl client_info::Host for StoreState {
    fn ip(&mut self) -> String {
        self.call.client.ip.to_string()
    }

    fn country(&mut self) -> Option<String> {
        self.call.client.country.clone()
    }

    fn region(&mut self) -> String {
        self.call.client.region.to_string()
    }

    fn user_id(&mut self) -> Option<String> {
        self.call.client.user_id.clone()
    }
}
