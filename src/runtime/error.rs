//! One error type for everything that can go wrong between accepting a request and answering it,
//! recording *who* failed — so the status code, the log line and the retry decision all come from
//! one place.

use std::io;

use http::StatusCode;

/// Why a proxied exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
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
    /// The backend failed before any byte of its response arrived. `reused` says the connection
    /// came from the pool's idle list rather than being opened for this request: the classic
    /// keep-alive race, where re-sending is what a client would have done had it held the
    /// connection itself.
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
    pub(crate) fn status(&self) -> StatusCode {
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

    /// Whether the request may go to another connection after this failure.
    ///
    /// Nothing was sent when a connect failed, so that is always safe. When a backend closed or
    /// reset the connection before any response byte, an idempotent request may be repeated
    /// (RFC 9110 §9.2.2); any other request only on a connection that had sat in the pool, where
    /// the failure is the keep-alive race (the backend closed it as idle just as it was reused),
    /// and only where its route opts in.
    pub(crate) fn may_resend(&self, idempotent: bool, route_opts_in: bool) -> bool {
        match self {
            ProxyError::Connect { .. } => true,
            ProxyError::BackendGone { reused, .. } => idempotent || (*reused && route_opts_in),
            _ => false,
        }
    }
}
