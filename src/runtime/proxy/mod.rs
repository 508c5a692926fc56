//! What happens to one client request: refuse what Juggler does not proxy, route it, read its body
//! whole, hand it to the backend its upstream's policy picks (waiting in that backend's queue for one
//! of its pooled connections), and turn the backend's answer, or the failure, into the client's
//! response.
//!
//! - `balance`: the order a request tries an upstream's backends in (round robin, least queued).
//! - [`request`]: the request head as every rule here reads it, HTTP/1.1 (as sent) or HTTP/2.
//! - [`headers`]: the request head sent to backends (hop-by-hop fields dropped, `X-Forwarded-*`).
//! - `request_checks`: requests hyper lets through that a proxy must refuse (smuggling).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::backend::conn::{FieldsWanted, ResponseHead};
use crate::backend::pool::{BackendPool, CheckoutError, Drain};
use crate::backend::spool::{BodyIntake, Budget, RequestBody};
use crate::backend::{self, OutgoingRequest, ResponseBody};
use crate::error::ProxyError;
use crate::metrics::{ListenerKind, Metrics};
use crate::sharded::Sharded;
use crate::table::{BackendId, Route, RouteMatch, RouteTable, Settings, UpstreamId};
use balance::Balancer;
use contain::CatchPanic;
use headers::{Added, ClientInfo};
use request::RequestHead;

mod balance;
mod contain;
pub mod headers;
pub mod request;
pub(crate) mod request_checks;

use crate::logging::AccessLine;
pub use crate::logging::ACCESS_LOG;

/// Everything requests share: the table, the pools and the balancing policies' state.
#[derive(Debug)]
pub struct Proxy {
    pub table: &'static RouteTable,
    pub pools: Vec<Arc<BackendPool>>,
    balancer: Balancer,
    /// Requests between arriving and being answered; during an upgrade, pooled connections are
    /// handed to the successor only while this is zero.
    pub(crate) requests_in_progress: Arc<AtomicUsize>,
    /// The memory and disk budgets request bodies and spooled responses share.
    pub budget: Arc<Budget>,
    /// The client side's counters (each pool keeps its backend's).
    pub metrics: Metrics,
    request_ids: RequestIds,
    /// Serialises ejections, so two backends failing at once cannot both take the last healthy
    /// place of their upstream.
    ejecting: Mutex<()>,
}

/// Names each request in the access log (and, with `request_id_header`, toward its backend), so
/// one request can be followed through the logs of every hop.
#[derive(Debug)]
struct RequestIds {
    /// Random per process: ids stay unique across restarts and upgrades.
    process: u32,
    /// Ids named so far, per thread: one shared count would be a write to the same line by
    /// every core for every logged request. The shard's number tops its ids, so they stay unique.
    next: Sharded<AtomicU64>,
}

/// Where [`RequestIds`] puts the shard's number in an id's count: above 2^44 ids per shard.
const SHARD_SHIFT: u32 = 44;

impl RequestIds {
    fn new() -> RequestIds {
        RequestIds {
            process: fastrand::u32(..),
            next: Sharded::new(),
        }
    }

    fn next_count(&self) -> u64 {
        let (shard, next) = self.next.local_indexed();
        let count = next.fetch_add(1, Ordering::Relaxed) & ((1 << SHARD_SHIFT) - 1);
        (shard as u64) << SHARD_SHIFT | count
    }

    /// The client's (or a proxy in front's) `X-Request-Id` if it is short printable ASCII,
    /// otherwise this process's next id.
    fn name(&self, head: &impl RequestHead) -> String {
        let given = head
            .field_text(headers::X_REQUEST_ID)
            .filter(|id| !id.is_empty() && id.len() <= 64);
        match given {
            Some(id) => id.to_owned(),
            None => own_id(self.process, self.next_count()),
        }
    }
}

/// `{process:08x}{count:012x}`, written by hand: `format!` spent about 2,000 instructions on it,
/// a tenth of what the access log cost per request (issue 18).
fn own_id(process: u32, count: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if count >> 48 != 0 {
        return format!("{process:08x}{count:012x}");
    }
    let digit = |value: u64, shift: usize| char::from(HEX[(value >> shift) as usize & 0xf]);
    let mut id = String::with_capacity(20);
    id.extend((0..8).rev().map(|at| digit(u64::from(process), 4 * at)));
    id.extend((0..12).rev().map(|at| digit(count, 4 * at)));
    id
}

/// One request counted in `requests_in_progress` until dropped, however handling ends (a client
/// that goes away drops the request's future mid-way).
struct InProgress<'a>(&'a AtomicUsize);

impl<'a> InProgress<'a> {
    fn count(counter: &'a AtomicUsize) -> InProgress<'a> {
        counter.fetch_add(1, Ordering::AcqRel);
        InProgress(counter)
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the access log and the counters record about a forwarded request.
#[derive(Debug, Default)]
struct Outcome {
    /// The backend that answered (or whose failure the client sees).
    backend: Option<BackendId>,
    queued: Duration,
}

impl Proxy {
    pub fn new(table: &'static RouteTable) -> Proxy {
        let pools = table
            .backends
            .iter()
            .map(|spec| {
                let upstream = table.upstream(spec.upstream);
                Arc::new(
                    BackendPool::protected(
                        spec,
                        &table.settings,
                        upstream.protection,
                        crate::threads::resolved_count(table.settings.proxy.worker_threads),
                    )
                    .with_pipeline(upstream.pipeline),
                )
            })
            .collect();
        Proxy {
            table,
            pools,
            balancer: Balancer::new(table),
            ejecting: Mutex::new(()),
            requests_in_progress: Arc::new(AtomicUsize::new(0)),
            budget: Arc::new(Budget::new(&table.settings.limits)),
            metrics: Metrics::new(crate::metrics::counting_enabled(&table.settings)),
            request_ids: RequestIds::new(),
        }
    }

    /// Starts the tasks that keep every pool at `n` connections; they stop when the set is
    /// dropped or shut down.
    pub fn maintain_pools(&self) -> tokio::task::JoinSet<()> {
        let mut upkeep = tokio::task::JoinSet::new();
        for pool in &self.pools {
            upkeep.spawn(Arc::clone(pool).maintain());
            if pool.protection.is_active() {
                upkeep.spawn(backend::health::protect(Arc::clone(pool)));
            }
        }
        upkeep
    }

    fn settings(&self) -> &'static Settings {
        &self.table.settings
    }

    /// Answers one client request (its head and its body). Never fails: every problem becomes a
    /// status code. Takes its own handle on the proxy, so the client side can hold this future
    /// directly, not inside a future of its own that owns the proxy.
    pub async fn handle<H, B>(
        self: Arc<Self>,
        head: H,
        body: B,
        client: ClientInfo,
    ) -> Response<ResponseBody>
    where
        H: RequestHead,
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let logged = AccessLine::enabled();
        let sent = self.settings().proxy.request_id_header;
        let request_id = (logged || sent).then(|| self.request_ids.name(&head));
        let log_started = logged.then(Instant::now);
        let added = Added {
            forwarded: self.settings().proxy.forwarded_headers.then_some(client),
            request_id: request_id.as_deref().filter(|_| sent),
        };
        let mut outcome = Outcome::default();
        let in_progress = InProgress::count(&self.requests_in_progress);
        let handled = CatchPanic::new(self.route_and_forward(&head, body, added, &mut outcome));
        let handled = handled.await;
        drop(in_progress);
        let mut response = handled.unwrap_or_else(|panic| {
            tracing::error!(
                client = %client.ip,
                method = %head.method(),
                uri = head.path_and_query(),
                panic,
                "bug: handling this request panicked; answered 500"
            );
            text_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        });
        let status = response.status();
        let body_bytes = response.body().size_hint().exact().unwrap_or(0);
        let listener = match client.https {
            true => ListenerKind::Https,
            false => ListenerKind::Http,
        };
        self.metrics
            .listener(listener)
            .answered(head.version(), status);
        let backend = outcome.backend.map(|id| &self.pools[usize::from(id.0)]);
        if let Some(pool) = backend {
            pool.counters.answered(status);
            response.body_mut().count_relayed(pool);
        }
        if let (Some(started), Some(request_id)) = (log_started, request_id.as_deref()) {
            AccessLine {
                request_id,
                client: client.ip,
                method: head.method(),
                path: head.path(),
                status: status.as_u16(),
                backend: backend.map_or("", |pool| pool.spec.address),
                backend_limit: backend.map_or(0, |pool| pool.limit()),
                queued_us: outcome.queued.as_micros() as u64,
                total_us: started.elapsed().as_micros() as u64,
                bytes: body_bytes,
            }
            .log();
        }
        response
    }

    async fn route_and_forward<B>(
        &self,
        head: &impl RequestHead,
        body: B,
        added: Added<'_>,
        outcome: &mut Outcome,
    ) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        #[cfg(feature = "test-hooks")]
        if head.has_field("x-juggler-test-panic") {
            panic!(
                "test hook: a panic while handling {}",
                head.path_and_query()
            );
        }
        if head.method() == Method::CONNECT || headers::wants_upgrade(head) {
            return text_response(
                StatusCode::NOT_IMPLEMENTED,
                "Juggler does not proxy long-lived connections (CONNECT, Upgrade, WebSocket).\n",
            );
        }
        if let Some(reason) = request_checks::ambiguity(head) {
            return closing(text_response(StatusCode::BAD_REQUEST, reason));
        }
        let route = match (self.table.match_route)(head.method(), head.path()) {
            RouteMatch::Found(id) => self.table.route(id),
            RouteMatch::NotFound => return text_response(StatusCode::NOT_FOUND, "no route\n"),
            RouteMatch::MethodNotAllowed(allowed) => {
                let mut response =
                    text_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                if let Ok(allow) = HeaderValue::from_str(&allowed.allow_header()) {
                    response.headers_mut().insert(header::ALLOW, allow);
                }
                return response;
            }
        };

        let body = match self.read_body(head, body).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let body_len = usize::try_from(body.len()).unwrap_or(usize::MAX);
        let mut encoded = Vec::with_capacity(512);
        headers::encode_request_head(head, body_len, added, &mut encoded);
        // The body's in-memory part goes out with the head in one vectored write.
        let request = OutgoingRequest {
            head: &encoded,
            body: &body,
            is_head: head.method() == Method::HEAD,
            fields: match head.version() {
                Version::HTTP_2 | Version::HTTP_3 => FieldsWanted::HeaderMap,
                _ => FieldsWanted::AsSent,
            },
        };
        let bytes_sent = encoded.len() as u64 + body.len();
        let idempotent = is_idempotent(head.method());
        match self
            .forward(route, &request, bytes_sent, idempotent, outcome)
            .await
        {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(%error, "request failed");
                error_response(&error)
            }
        }
    }

    /// Reads the whole request body within the size limit and the body timeout: its first
    /// `body_memory_bytes` into memory, the rest into a spill file, each as the budgets allow.
    async fn read_body<B>(
        &self,
        head: &impl RequestHead,
        body: B,
    ) -> Result<RequestBody, Response<ResponseBody>>
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let limits = &self.settings().limits;
        if body.is_end_stream() {
            return Ok(RequestBody::default());
        }
        let declared = head
            .field_text("content-length")
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limits.max_body_bytes as u64) {
            return Err(too_large());
        }
        let mut intake = BodyIntake::new(&self.budget);
        let read = read_into(&mut intake, body, limits.max_body_bytes);
        let read = tokio::time::timeout(limits.body_read_timeout, read).await;
        match read {
            Ok(Ok(())) => {}
            Ok(Err(IntakeError::TooLarge)) => return Err(too_large()),
            Ok(Err(IntakeError::Client(error))) => {
                tracing::debug!(%error, "client sent a bad body");
                return Err(closing(text_response(
                    StatusCode::BAD_REQUEST,
                    "malformed request body\n",
                )));
            }
            Ok(Err(IntakeError::Spill(error))) => {
                tracing::error!(%error, "cannot spill a request body to a temporary file");
                return Err(closing(unavailable(
                    "request body could not be stored, retry later\n",
                )));
            }
            Err(_) if intake.waiting_for_budget => {
                tracing::warn!(
                    memory_available = self.budget.memory_available(),
                    disk_available = self.budget.disk_available(),
                    "request body budget full until the body timeout; answered 503"
                );
                return Err(closing(unavailable(
                    "too many uploads in progress, retry later\n",
                )));
            }
            Err(_) => {
                return Err(closing(text_response(
                    StatusCode::REQUEST_TIMEOUT,
                    "request body not received in time\n",
                )))
            }
        }
        intake.finish().await.map_err(|error| {
            tracing::error!(%error, "cannot spill a request body to a temporary file");
            closing(unavailable(
                "request body could not be stored, retry later\n",
            ))
        })
    }

    /// Sends the request to the backend the upstream's policy picks, falling back down its order
    /// when a backend is down, full or unreachable, and re-sending once (by default) after a
    /// keep-alive race.
    async fn forward(
        &self,
        route: &'static Route,
        request: &OutgoingRequest<'_>,
        bytes_sent: u64,
        idempotent: bool,
        outcome: &mut Outcome,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let upstream = self.table.upstream(route.upstream);
        let mut resends_left = self.settings().proxy.max_retries;
        let mut last_error = None;
        // The backends in the policy's order, once more for every re-send allowed: a re-send goes
        // to the next backend in that order, not back to the one that just failed.
        let passes = 1 + resends_left as usize;
        let mut order = self.balancer.order(
            self.table,
            &self.pools,
            route.upstream,
            route.priority,
            passes,
        );
        if order.len() < upstream.backends.len() * passes {
            self.count_full_queues(upstream.backends);
        }
        let race = self.balancer.waits_in_two_queues(route.upstream);
        // What may be written behind another request while it waits (see `backend::pipeline`):
        // a request the backend may see twice, and that has nothing to send but its head.
        let rides =
            (upstream.pipeline && idempotent && request.body.is_empty()).then_some(request.head);
        let mut next = 0;
        while next < order.len() {
            let mut backend = order[next];
            next += 1;
            let mut pool = &self.pools[usize::from(backend.0)];
            if !pool.takes_requests() {
                continue;
            }
            // A request that would queue may wait in the next backend's queue too and take
            // whichever slot frees first (least_queued), so a burst that arrives before anything
            // is known of the backends' speed does not stay piled up behind a slow one. The
            // backend not taken moves up to be next in order, where a re-send goes.
            let rival = order.get(next).copied().filter(|&rival| {
                let rival_pool = &self.pools[usize::from(rival.0)];
                // Both busy: a rival with a free connection would simply win at once.
                race && rival != backend
                    && pool.free_slots_for(route.priority) == 0
                    && rival_pool.free_slots_for(route.priority) == 0
                    && rival_pool.takes_requests()
            });
            let checked = match rival {
                None => pool.checkout_or_ride(route.priority, rides).await,
                Some(rival) => {
                    let rival_pool = &self.pools[usize::from(rival.0)];
                    // Losing checkouts are dropped, which takes them out of their queue. Boxed
                    // (only least_queued races): two checkouts inline would set the size of this
                    // future and of every one around it, copied whole on every request.
                    let (checked, rival_won) = Box::pin(async {
                        tokio::select! {
                            checked = pool.checkout(route.priority) => (checked, false),
                            checked = rival_pool.checkout(route.priority) => (checked, true),
                        }
                    })
                    .await;
                    if rival_won {
                        order[next] = backend;
                        (backend, pool) = (rival, rival_pool);
                    }
                    checked
                }
            };
            let slot = match checked {
                Ok(slot) => slot,
                Err(CheckoutError::QueueFull) => {
                    pool.counters.queue_full();
                    continue;
                }
                Err(CheckoutError::QueueTimeout) => {
                    pool.counters.queue_timeout();
                    outcome.backend = Some(backend);
                    return Err(ProxyError::QueueTimeout {
                        backend: pool.spec.address,
                    });
                }
                Err(CheckoutError::Connect(source)) => {
                    last_error = Some(ProxyError::Connect {
                        backend: pool.spec.address,
                        source,
                    });
                    continue;
                }
                // Left rotation while this request waited for it: nothing was sent, so the
                // request moves on down the order (or is answered 503 if nothing is left).
                Err(CheckoutError::Down) => continue,
            };
            outcome.backend = Some(backend);
            outcome.queued += slot.queued_for;
            let queued_for = slot.queued_for;
            let limits = &self.settings().limits;
            // Two clock readings per exchange serve every use of the time below. A request that
            // rode is timed from when it was written behind another.
            let held_since = slot.sent_at.unwrap_or_else(Instant::now);
            pool.protection.active_at(held_since);
            let exchanged = backend::exchange(slot, request, limits, &self.budget).await;
            let back = Instant::now();
            if exchanged.is_ok() {
                // It answered: not hung, whatever its other connections are doing.
                pool.protection.active_at(back);
            }
            let held = back.saturating_duration_since(held_since);
            let failed = self.judge_answer(route.upstream, backend, &exchanged);
            if exchanged.is_ok() && !failed {
                // Counted only for an adaptive limit: the count reads every lane's slots.
                pool.protection
                    .record_response_time(held, || pool.busy_slots());
            }
            // How long this backend took to answer, for policies that weigh backends by speed.
            self.balancer
                .observe(route.upstream, backend, held, failed, back);
            pool.counters.exchanged(queued_for, held, bytes_sent);
            match exchanged {
                Ok((head, body)) => return Ok(into_response(head, body)),
                Err(error)
                    if resends_left > 0
                        && error.may_resend(idempotent, route.retry_non_idempotent) =>
                {
                    tracing::info!(%error, "re-sending the request to the next backend");
                    pool.counters.resend();
                    resends_left -= 1;
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or(ProxyError::NoBackendAvailable {
            upstream: upstream.name,
        }))
    }
}

impl Proxy {
    /// Feeds a backend's answer to its ejection count and ejects it after a run of `5xx`, unless
    /// it is the last backend of its upstream still in rotation. Returns whether the answer was a
    /// failure (a `5xx`, or Juggler's own 502/504 for a backend that broke or did not answer; a
    /// keep-alive race is not the backend's fault and counts as nothing).
    fn judge_answer(
        &self,
        upstream: UpstreamId,
        backend: BackendId,
        exchanged: &Result<(ResponseHead, ResponseBody), ProxyError>,
    ) -> bool {
        let (status, retry_after) = match exchanged {
            // Retry-After changes the verdict of a 503 only: no field lookup for the others.
            Ok((head, _)) => (
                head.status,
                head.status == StatusCode::SERVICE_UNAVAILABLE
                    && head.has_field(&header::RETRY_AFTER),
            ),
            Err(ProxyError::BackendGone { reused: true, .. }) => return false,
            Err(error) => (error.status(), false),
        };
        let pool = &self.pools[usize::from(backend.0)];
        if pool.protection.answered(status, retry_after) {
            let _one_at_a_time = self.ejecting.lock().unwrap_or_else(PoisonError::into_inner);
            let others_in = self
                .table
                .upstream(upstream)
                .backends
                .iter()
                .any(|&other| other != backend && !self.pools[usize::from(other.0)].is_down());
            if others_in {
                let length = pool.eject();
                tracing::warn!(
                    backend = pool.spec.address,
                    seconds = length.as_secs(),
                    "backend ejected: eject_after_5xx server errors in a row"
                );
            } else if pool.protection.failure_run() == pool.protection.config.eject_after_5xx {
                // Once per run of failures: every further 5xx would say the same.
                tracing::warn!(
                    backend = pool.spec.address,
                    "backend not ejected after eject_after_5xx server errors: it is the last of its upstream in rotation"
                );
            }
        }
        status.is_server_error() && !(status == StatusCode::SERVICE_UNAVAILABLE && retry_after)
    }

    /// Counts a refusal for each of `backends` whose queue is full: the policy left them out of
    /// this request's order. A down or drained backend is left out for that reason instead.
    fn count_full_queues(&self, backends: &[BackendId]) {
        for &id in backends {
            let pool = &self.pools[usize::from(id.0)];
            if pool.is_full() && !pool.is_down() && pool.drain_state() == Drain::Off {
                pool.counters.queue_full();
            }
        }
    }
}

/// Why a request body could not be taken in.
enum IntakeError {
    TooLarge,
    Client(Box<dyn std::error::Error + Send + Sync>),
    Spill(std::io::Error),
}

impl IntakeError {
    fn client(error: impl std::error::Error + Send + Sync + 'static) -> IntakeError {
        IntakeError::Client(Box::new(error))
    }
}

/// Feeds the client's body to `intake` frame by frame. A frame is polled only after the previous
/// one is stored, so while a budget is full hyper reads nothing more from the client, with one
/// exception: while a frame waits for the budget, the next one is polled (and kept) so that a
/// client that goes away is noticed and its budget given back at once, not at its body timeout.
async fn read_into<B>(intake: &mut BodyIntake<'_>, body: B, max: usize) -> Result<(), IntakeError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut body = std::pin::pin!(body);
    let mut total = 0usize;
    // The frame polled while the previous one waited; `Some(None)`: the body ended meanwhile.
    let mut ahead: Option<Option<Frame<Bytes>>> = None;
    loop {
        let frame = match ahead.take() {
            Some(frame) => frame,
            None => match body.frame().await {
                Some(frame) => Some(frame.map_err(IntakeError::client)?),
                None => None,
            },
        };
        let Some(frame) = frame else {
            return Ok(());
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > max {
            return Err(IntakeError::TooLarge);
        }
        let push = intake.push(data);
        tokio::pin!(push);
        loop {
            tokio::select! {
                pushed = &mut push => {
                    pushed.map_err(IntakeError::Spill)?;
                    break;
                }
                next = body.frame(), if ahead.is_none() => {
                    ahead = Some(match next {
                        Some(frame) => Some(frame.map_err(IntakeError::client)?),
                        None => None,
                    });
                }
            }
        }
    }
}

fn too_large() -> Response<ResponseBody> {
    closing(text_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request body too large\n",
    ))
}

/// `503` with `Retry-After`.
fn unavailable(text: &'static str) -> Response<ResponseBody> {
    let mut response = text_response(StatusCode::SERVICE_UNAVAILABLE, text);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, headers::RETRY_AFTER_SECONDS);
    response
}

/// RFC 9110 §9.2.2: methods a client may repeat without changing the outcome.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// The client's response: the backend's status and end-to-end headers (see `backend::conn`) with
/// its body.
fn into_response(head: ResponseHead, body: ResponseBody) -> Response<ResponseBody> {
    let ResponseHead {
        status,
        headers,
        forwarded,
        ..
    } = head;
    let mut response = Response::new(body.with_forwarded(forwarded));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

pub fn text_response(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Asks hyper to close the client connection after this response.
fn closing(mut response: Response<ResponseBody>) -> Response<ResponseBody> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn error_response(error: &ProxyError) -> Response<ResponseBody> {
    let status = error.status();
    let text = match status {
        StatusCode::SERVICE_UNAVAILABLE => "no backend available, retry later\n",
        StatusCode::GATEWAY_TIMEOUT => "backend did not answer in time\n",
        _ => "backend failed\n",
    };
    let mut response = text_response(status, text);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, headers::RETRY_AFTER_SECONDS);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::{own_id, RequestIds};

    /// Threads count ids on copies of their own; no two ids are the same.
    #[test]
    fn ids_named_on_several_threads_never_repeat() {
        let ids = RequestIds::new();
        let name = || (0..1000).map(|_| ids.next_count()).collect::<Vec<_>>();
        let named: Vec<u64> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..3).map(|_| scope.spawn(name)).collect();
            threads
                .into_iter()
                .flat_map(|thread| thread.join().unwrap())
                .collect()
        });
        let distinct: std::collections::HashSet<_> = named.iter().collect();
        assert_eq!(distinct.len(), 3000);
    }

    #[test]
    fn own_ids_are_the_formatted_ones() {
        for (process, count) in [
            (0, 0),
            (0xdead_beef, 1),
            (0x0102_0304, 0xfff_ffff_ffff),
            (u32::MAX, 1 << 48),
            (7, u64::MAX),
        ] {
            assert_eq!(own_id(process, count), format!("{process:08x}{count:012x}"));
        }
    }
}
