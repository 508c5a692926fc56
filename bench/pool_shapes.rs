//! Issue 3's design question, measured: should each pooled backend connection have a worker task
//! that pulls requests from a queue (the original Juggler's thread-per-connection shape), or should
//! the client's own task check a connection out of the pool and use it itself (fewer task hops)?
//!
//! Both shapes run here against the same loopback backend with the same connection code
//! (`juggler::backend::conn`), in alternating rounds, and the rates are printed side by side.
//! Run: `cargo bench --bench pool_shapes` (env ROUNDS, SECONDS, CLIENTS, POOL to vary).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use juggler::backend::conn::{BackendConn, FieldsWanted};
use juggler::backend::pool::BackendPool;
use juggler::table::{BackendSpec, Priority, Settings, UpstreamId};
use tokio::sync::{mpsc, oneshot, Mutex};

const REQUEST: &[u8] = b"GET /small HTTP/1.1\r\nhost: bench\r\nconnection: keep-alive\r\n\r\n";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A 12-byte hyper backend on its own thread and runtime, like a separate server process.
fn start_backend() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                stream.set_nodelay(true).unwrap();
                tokio::spawn(async move {
                    let service = service_fn(|_request| async {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"hello world\n",
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    addr
}

/// One exchange on a connection: write, read the head, read the body.
async fn exchange(conn: &mut BackendConn) -> Option<(bool, Bytes)> {
    let no_body = juggler::backend::spool::RequestBody::default();
    conn.write_request(REQUEST, &no_body, &[]).await.ok()?;
    let head = conn.read_head(false, FieldsWanted::HeaderMap).await.ok()?;
    let length = match head.framing {
        juggler::backend::conn::Framing::Length(length) => length as usize,
        _ => 0,
    };
    let body = conn.read_exact_body(length).await.ok()?;
    Some((head.keep_alive, body))
}

/// Runs `clients` tasks, each repeating `request` until `seconds` have passed, and counts the
/// requests that completed. `request` returns whether its request completed.
async fn count_completed<F, Fut>(clients: u64, seconds: u64, request: F) -> u64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (request, done, stop) = (request.clone(), Arc::clone(&done), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if request().await {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    done.load(Ordering::Relaxed)
}

/// Shape A: the client task checks a connection out of Juggler's real pool.
async fn checkout_shape(pool: Arc<BackendPool>, clients: u64, seconds: u64) -> u64 {
    count_completed(clients, seconds, move || {
        let pool = Arc::clone(&pool);
        async move {
            let Ok(mut slot) = pool.checkout(Priority::Normal).await else {
                return false;
            };
            let Some((keep_alive, body)) = exchange(slot.conn()).await else {
                return false;
            };
            slot.response_complete(keep_alive);
            std::hint::black_box(body);
            true
        }
    })
    .await
}

type Job = oneshot::Sender<Bytes>;

/// Shape B: n worker tasks, each owning one connection, pull jobs from a shared FIFO queue and
/// answer on a oneshot channel.
async fn worker_shape(addr: &'static str, pool_size: u64, clients: u64, seconds: u64) -> u64 {
    let (queue, jobs) = mpsc::channel::<Job>(4096);
    let jobs = Arc::new(Mutex::new(jobs));
    let mut workers = Vec::new();
    for _ in 0..pool_size {
        let jobs = Arc::clone(&jobs);
        workers.push(tokio::spawn(async move {
            let mut conn = BackendConn::connect(addr, Duration::from_secs(3))
                .await
                .unwrap();
            loop {
                let Some(job) = jobs.lock().await.recv().await else {
                    return;
                };
                if let Some((_, body)) = exchange(&mut conn).await {
                    let _ = job.send(body);
                }
            }
        }));
    }
    let client_queue = queue.clone();
    let done = count_completed(clients, seconds, move || {
        let queue = client_queue.clone();
        async move {
            let (reply, answer) = oneshot::channel();
            if queue.send(reply).await.is_err() {
                return false;
            }
            answer.await.map(std::hint::black_box).is_ok()
        }
    })
    .await;
    drop(queue);
    for worker in workers {
        worker.abort();
    }
    done
}

fn main() {
    let rounds = env_or("ROUNDS", 3);
    let seconds = env_or("SECONDS", 3);
    let clients = env_or("CLIENTS", 64);
    let pool_size = env_or("POOL", 8);
    let backend = start_backend();
    let address: &'static str = Box::leak(backend.to_string().into_boxed_str());
    let spec: &'static BackendSpec = Box::leak(Box::new(BackendSpec {
        address,
        pool_size: pool_size as usize,
        upstream: UpstreamId(0),
        weight: 1,
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "pool shapes: {clients} clients, pool {pool_size}, {rounds} rounds x {seconds}s, \
         1 runtime thread (the backend has its own)"
    );
    let (mut checkout_total, mut worker_total) = (0u64, 0u64);
    runtime.block_on(async {
        let pool = Arc::new(BackendPool::new(spec, &Settings::DEFAULT));
        for round in 1..=rounds {
            let started = Instant::now();
            let checkout = checkout_shape(Arc::clone(&pool), clients, seconds).await;
            let checkout_rate = checkout as f64 / started.elapsed().as_secs_f64();
            let started = Instant::now();
            let worker = worker_shape(address, pool_size, clients, seconds).await;
            let worker_rate = worker as f64 / started.elapsed().as_secs_f64();
            println!(
                "round {round}: checkout {checkout_rate:>9.0} req/s   worker+queue {worker_rate:>9.0} req/s   ratio {:.2}",
                checkout_rate / worker_rate
            );
            checkout_total += checkout;
            worker_total += worker;
        }
    });
    println!(
        "overall: checkout / worker+queue = {:.2}",
        checkout_total as f64 / worker_total as f64
    );
}
