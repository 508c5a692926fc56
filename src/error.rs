//! One error type for everything that can go wrong between accepting a request and answering it,
//! recording *who* failed — so the status code, the log line and the retry decision all come from
//! one place.

use std::io;

use http::StatusCode;

/// Why a proxied exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Every backend of the upstream is down or its queue is full.
    #[error("no backend of upstream `{upstream}` can take the request (all down or queues full)")]
    NoBackendAvailable { upstream: &'static str },
    /// The request waited in a backend's queue longer than the queue timeout.
    #[error("request waited longer than the queue timeout for a connection to {backend}")]
    QueueTimeout { backend: &'static str },
    /// A pooled connection could not be opened.
    #[error("cannot connect to backend {backend}: {source}")]
    Connect {
        backend: &'static str,
        source: io::Error,
    },
    /// The backend failed before any byte of its response arrived. `reused` says the connection had
    /// carried a request before: the classic keep-alive race, where re-sending is what a client would
    /// have done had it held the connection itself.
    #[error("backend {backend} closed or reset the connection before responding: {source}")]
    BackendGone {
        backend: &'static str,
        reused: bool,
        source: io::Error,
    },
    /// The backend sent something that is not a valid HTTP/1.1 response.
    #[error("backend {backend} sent an invalid response: {reason}")]
    InvalidResponse {
        backend: &'static str,
        reason: &'static str,
    },
    /// The backend's response did not arrive within the backend timeout.
    #[error("backend {backend} did not answer within the backend timeout")]
    BackendTimeout { backend: &'static str },
    /// The backend's response was cut off part-way through its body.
    #[error("backend {backend} closed the connection part-way through its response")]
    Truncated { backend: &'static str },
}

impl ProxyError {
    /// The status the client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoBackendAvailable { .. } | ProxyError::QueueTimeout { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::BackendTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Connect { .. }
            | ProxyError::BackendGone { .. }
            | ProxyError::InvalidResponse { .. }
            | ProxyError::Truncated { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Whether the request is known not to have been acted on by any backend, so it may go to
    /// another connection. `BackendGone` on a fresh connection is not retried: a fresh connection
    /// failing means the backend is in trouble, not that we raced its idle timer.
    pub fn request_not_processed(&self) -> bool {
        match self {
            ProxyError::Connect { .. } => true,
            ProxyError::BackendGone { reused, .. } => *reused,
            _ => false,
        }
    }

    /// Whether the request never reached a backend at all (safe to retry for every method).
    pub fn request_not_sent(&self) -> bool {
        matches!(self, ProxyError::Connect { .. })
    }
}
