//! The body written to a client: the proxy's response body with the request's [`InFlight`]
//! guard attached. The guard drops with the body, when the connection has finished with it (written or
//! abandoned): that is how the connection's timers learn the request is over.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::activity::InFlight;
use crate::backend::ResponseBody;

#[derive(Debug)]
pub(crate) struct TrackedBody {
    body: ResponseBody,
    _in_flight: InFlight,
}

impl TrackedBody {
    pub(crate) fn new(body: ResponseBody, in_flight: InFlight) -> TrackedBody {
        TrackedBody {
            body,
            _in_flight: in_flight,
        }
    }
}

impl TrackedBody {
    /// The backend's end-to-end fields as it sent them, if they came that way.
    pub(crate) fn forwarded(&self) -> Option<&crate::backend::head::ForwardedFields> {
        self.body.forwarded()
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
