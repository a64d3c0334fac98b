//! A read-only binary cache served over HTTP straight from a local store,
//! as nix-serve and harmonia serve Nix's: `bigtop cache serve`, and the
//! same server for a program that embeds it.
//!
//! It answers, for `GET` and `HEAD` (which says the length `GET` would
//! send, unless that is a compressed NAR's, known only once sent):
//!
//! - `/nix-cache-info`: the store's dir, `WantMassQuery: 1` and the
//!   priority of [`Options::priority`];
//! - `/<digest>.narinfo`: made from what the store records of the valid
//!   path with that digest, its NAR hash as SHA-256, signed on the fly
//!   with [`Options::key`]; no `FileHash` or `FileSize`, since the file
//!   is compressed as it is sent (Nix, and bigtop's fetch, take narinfos
//!   without them);
//! - `/nar/<digest>-<recorded NAR hash>.nar[.zst|.xz]`: the path's NAR,
//!   dumped from the store as it is sent and compressed with
//!   [`Options::compression`], the only extension served (another is
//!   404: the client does not choose what a download costs the server;
//!   narinfos that clients kept from before a change of compression
//!   name NARs no longer served, which they fetch elsewhere or build).
//!   It streams through a bounded channel, so a download holds a few
//!   64 KiB chunks and the compressor's state whatever the path's size
//!   (sized to the NAR: at most about 3 MiB for zstd, 94 MiB for xz at
//!   Nix's level 6), and it is checked against the recorded hash and
//!   size as it goes: a path changed on disk is never sent whole, the
//!   connection is cut before the end instead (and reported through
//!   [`Options::on_error`]).
//!
//! Anything else is 404, a name shaped as a narinfo's or NAR's but not
//! valid is 400, another method is 405. Request paths are parsed as
//! digests and hashes, never joined to a file-system path.
//!
//! Store queries, hashes and dumps run on blocking threads, never on the
//! threads that serve connections, and each kind has its own bound, so
//! none starves the others of threads: at most
//! [`Options::max_nar_streams`] NARs are dumped at once, and a request
//! for another waits its turn for at most [`Options::nar_wait`], then is
//! answered 503 with `Retry-After`; at most [`Options::max_hash_jobs`]
//! NARs are hashed at once for narinfos; 64 more threads are left for
//! lookups.
//!
//! When the store records BLAKE3 (bigtop's does), a path's SHA-256 is
//! computed by dumping its NAR the first time its narinfo is asked for,
//! then kept in memory (for [`Options::sha256_cache`] paths). Requests
//! for a path being hashed wait for that one computation without holding
//! a thread. The narinfo is answered once the hash is known, which for a
//! NAR of many GiB may take longer than a client waits for an answer to
//! begin (bigtop's: 60 seconds): the computation goes on without that
//! client, and keeps its result, so the client's retry (bigtop's client
//! tries a request three times) or a later request is answered at once.
//! (A 503 until hashed was the other way: clients retry a 503 a few
//! times within seconds, then give up on the path, sooner than they do
//! waiting.) `HEAD` computes no hash.
//!
//! A client that takes none of an answer's bytes for
//! [`Options::send_timeout`] (more exactly: lets the connection's send
//! buffer stay full that long) is disconnected, which stops its NAR's
//! dump and frees its turn: connections that ask for NARs and never read
//! hold the streams for that long, not for good. A client that reads
//! slowly but steadily keeps its stream as long as it likes; the number
//! of streams bounds what such clients cost.
//!
//! The store is not locked against garbage collection while a path is
//! sent: a path collected meanwhile fails its download (the connection
//! is cut) as a changed one does.
//!
//! ```
//! use std::sync::Arc;
//! use bigtop::serve::{Options, Server};
//! use bigtop::core::{SecretKey, TrustedKeys};
//! use bigtop::store::cache::{fetch, FetchOptions, HttpCache};
//! use bigtop::store::Store;
//! # let tmp = tempfile::tempdir()?;
//! let store = Store::open_chroot(tmp.path().join("served"))?;
//! let path = store.add_text("hello", b"hello\n", &Default::default())?;
//! let key = SecretKey::generate("cache.example.org-1")?;
//! let mut options = Options::default();
//! options.key = Some(key.clone());
//! let server = Server::bind(Arc::new(store), "127.0.0.1:0".parse()?, options)?;
//! let url = format!("http://{}", server.local_addr());
//! let stop = server.shutdown_handle();
//! let running = std::thread::spawn(move || server.run());
//!
//! let to = Store::open_chroot(tmp.path().join("to"))?;
//! let trusted: TrustedKeys = [key.public()].into_iter().collect();
//! fetch(&to, &HttpCache::new(&url)?, &[path.clone()], &FetchOptions::trusting(trusted))?;
//! assert!(to.is_valid(&path)?);
//! stop.shutdown();
//! running.join().expect("the server thread");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod nar;
mod narinfo;
mod route;
mod stall;

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bigtop_core::nar::DumpError;
use bigtop_core::signing::SecretKey;
use bigtop_core::{StorePath, StorePathDigest};
use bigtop_store::cache::{CacheInfo, Compression};
use bigtop_store::{PathInfo, Store};
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use route::{Refusal, Route};

/// What went wrong: binding, or (reported through [`Options::on_error`]
/// while serving) a path the store could not give.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The address could not be listened on.
    #[error("cannot listen on `{addr}`")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The server's threads could not be started.
    #[error("cannot start the server's threads")]
    Runtime(#[source] io::Error),
    /// A connection could not be accepted (too many open files, say).
    #[error("cannot accept a connection")]
    Accept(#[source] io::Error),
    /// The store could not be queried.
    #[error("cannot read `{what}` from the store")]
    Store {
        /// The path, or the digest asked for.
        what: String,
        /// Why.
        #[source]
        source: Box<bigtop_store::Error>,
    },
    /// A path's NAR could not be read.
    #[error("cannot archive `{path}`")]
    Dump {
        /// The path.
        path: StorePath,
        /// Why.
        #[source]
        source: Box<DumpError>,
    },
    /// A path on disk no longer matches the NAR hash and size the store
    /// recorded for it: it is not served.
    #[error("`{path}` in the store no longer matches its recorded NAR hash and size: run `bigtop store verify`")]
    Changed {
        /// The path.
        path: StorePath,
    },
    /// A NAR could not be compressed.
    #[error("cannot compress the NAR of `{path}`")]
    Compress {
        /// The path.
        path: StorePath,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A thread of the server failed (a panic in a store query, say).
    #[error("a request for `{what}` failed")]
    Task {
        /// What was asked for.
        what: String,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Called with each failure on the server's side while serving.
pub type OnError = Arc<dyn Fn(&Error) + Send + Sync>;

/// How a [`Server`] serves.
#[derive(Clone)]
#[non_exhaustive]
pub struct Options {
    /// How NARs are compressed: what narinfos name, and the only
    /// compression served. Default: zstd.
    pub compression: Compression,
    /// Signs each narinfo, when given. Default: none.
    pub key: Option<SecretKey>,
    /// `Priority:` in `nix-cache-info` (lower is tried first). Default:
    /// 30, as nix-serve says.
    pub priority: u32,
    /// NARs dumped at once at most; more wait for one to finish (see
    /// [`nar_wait`](Self::nar_wait)). Times the compressor's state per
    /// NAR (at most about 3 MiB for zstd, 94 MiB for xz), this bounds
    /// the memory downloads take. Default: 64.
    pub max_nar_streams: usize,
    /// How long a request for a NAR waits for one of the
    /// [`max_nar_streams`](Self::max_nar_streams) to free before it is
    /// answered 503 Service Unavailable, with `Retry-After` (clients,
    /// bigtop's and Nix's, retry a 503 a few times). Default: 30
    /// seconds.
    pub nar_wait: Duration,
    /// How long a client may take no bytes of an answer under way (more
    /// exactly: leave the connection's send buffer full) before its
    /// connection is closed, which stops its NAR's dump and frees its
    /// stream: a client that asks and never reads holds nothing for
    /// longer. Default: 60 seconds.
    pub send_timeout: Duration,
    /// Paths whose NAR's SHA-256 is kept in memory at most (for stores
    /// that record BLAKE3). Default: 16,384 (a few MiB).
    pub sha256_cache: usize,
    /// NARs hashed at once at most to answer narinfos (for stores that
    /// record BLAKE3), each on a thread of its own; more wait their
    /// turn. Default: twice the CPUs.
    pub max_hash_jobs: usize,
    /// How long [`Server::run`] waits, once shut down, for responses
    /// under way to finish before cutting them. Default: 10 seconds.
    pub shutdown_grace: Duration,
    /// Told of each failure on the server's side (not of a client that
    /// went away). Default: none.
    pub on_error: Option<OnError>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            compression: Compression::Zstd,
            key: None,
            priority: 30,
            max_nar_streams: 64,
            nar_wait: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            sha256_cache: 16_384,
            max_hash_jobs: std::thread::available_parallelism().map_or(2, |n| 2 * n.get()),
            shutdown_grace: Duration::from_secs(10),
            on_error: None,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("compression", &self.compression)
            .field("key", &self.key.as_ref().map(SecretKey::name))
            .field("priority", &self.priority)
            .field("max_nar_streams", &self.max_nar_streams)
            .field("nar_wait", &self.nar_wait)
            .field("send_timeout", &self.send_timeout)
            .field("sha256_cache", &self.sha256_cache)
            .field("max_hash_jobs", &self.max_hash_jobs)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("on_error", &self.on_error.is_some())
            .finish()
    }
}

/// Blocking threads for store queries, beyond those dumps and hashes may
/// take.
const LOOKUP_THREADS: usize = 64;

/// A binary cache server bound to its address, not yet serving.
pub struct Server {
    runtime: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<watch::Sender<bool>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("store_dir", &self.state.store.store_dir())
            .field("options", &self.state.options)
            .finish_non_exhaustive()
    }
}

/// Stops a running [`Server`] from any thread.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Makes [`Server::run`] stop accepting connections, let responses
    /// under way finish (for at most [`Options::shutdown_grace`]) and
    /// return. Calling it before `run` makes `run` return at once.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// What every request reads.
struct State {
    store: Arc<Store>,
    options: Options,
    cache_info: Bytes,
    streams: Arc<Semaphore>,
    sha256s: narinfo::Sha256s,
}

impl State {
    fn report(&self, e: &Error) {
        if let Some(f) = &self.options.on_error {
            f(e);
        }
    }
}

impl Server {
    /// Listens on `addr` (only there; port 0 picks a free one, see
    /// [`local_addr`](Self::local_addr)) to serve `store`.
    pub fn bind(store: Arc<Store>, addr: SocketAddr, options: Options) -> Result<Server, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_io()
            .enable_time()
            .thread_name("bigtop-serve")
            // Dumps and hashes take at most their limits' worth of these:
            // lookups always have threads left.
            .max_blocking_threads(
                options.max_nar_streams.max(1) + options.max_hash_jobs.max(1) + LOOKUP_THREADS,
            )
            .build()
            .map_err(Error::Runtime)?;
        let bind = |source| Error::Bind { addr, source };
        let std_listener = std::net::TcpListener::bind(addr).map_err(bind)?;
        std_listener.set_nonblocking(true).map_err(bind)?;
        let local_addr = std_listener.local_addr().map_err(bind)?;
        let listener = {
            let _in_runtime = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener).map_err(bind)?
        };
        let cache_info = CacheInfo {
            store_dir: store.store_dir().as_str().to_owned(),
            want_mass_query: true,
            priority: options.priority,
        }
        .to_text();
        let state = Arc::new(State {
            store,
            cache_info: Bytes::from(cache_info),
            streams: Arc::new(Semaphore::new(options.max_nar_streams.max(1))),
            sha256s: narinfo::Sha256s::new(options.sha256_cache, options.max_hash_jobs),
            options,
        });
        Ok(Server {
            runtime,
            listener,
            local_addr,
            state,
            stop: Arc::new(watch::channel(false).0),
        })
    }

    /// The address it listens on (with the port picked, if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops [`run`](Self::run).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.stop.clone())
    }

    /// Serves until a [`ShutdownHandle`] stops it, then lets responses
    /// under way finish for at most [`Options::shutdown_grace`].
    pub fn run(self) {
        let Server {
            runtime,
            listener,
            state,
            stop,
            ..
        } = self;
        let grace = state.options.shutdown_grace;
        runtime.block_on(async move {
            let mut stopped = stop.subscribe();
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => break,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => {
                            // Narinfos are small answers: sent at once.
                            let _ = tcp.set_nodelay(true);
                            let tcp = stall::StallTimeout::new(tcp, state.options.send_timeout);
                            connections.spawn(connection(tcp, state.clone(), stop.subscribe()));
                        }
                        Err(e) => {
                            state.report(&Error::Accept(e));
                            // Out of descriptors, say: let some close
                            // rather than spin.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
            drop(listener);
            let drained = async { while connections.join_next().await.is_some() {} };
            let _ = tokio::time::timeout(grace, drained).await;
            connections.shutdown().await;
        });
        // What still runs is a hash being computed for a narinfo; a dump
        // stops when its connection is gone.
        runtime.shutdown_timeout(grace);
    }
}

/// Serves one connection until it closes, or until the server stops and
/// the response under way is sent.
async fn connection(
    tcp: stall::StallTimeout<tokio::net::TcpStream>,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(respond(&state, req).await) }
    });
    let mut builder = http1::Builder::new();
    // A client that does not send its request's head in time is dropped
    // (hyper's 30 seconds, which need a timer).
    builder.timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(tcp), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

async fn respond(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut r = status(StatusCode::METHOD_NOT_ALLOWED);
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
    };
    let route = match route::parse(req.uri().path()) {
        Ok(route) => route,
        Err(Refusal::NotFound) => return status(StatusCode::NOT_FOUND),
        Err(Refusal::BadName) => return status(StatusCode::BAD_REQUEST),
    };
    let r = match route {
        Route::CacheInfo => Ok(Some(full(
            "text/x-nix-cache-info",
            state.cache_info.clone(),
        ))),
        Route::NarInfo(digest) => narinfo(state, digest, head).await,
        // Only the compression the server was told: the client does not
        // choose what a download costs it (xz's state is up to 94 MiB).
        Route::Nar { compression, .. } if compression != state.options.compression => Ok(None),
        Route::Nar {
            digest,
            nar_hash,
            compression,
        } => nar(state, digest, nar_hash, compression, head).await,
    };
    let mut r = match r {
        Ok(Some(r)) => r,
        Ok(None) => status(StatusCode::NOT_FOUND),
        Err(e) => {
            state.report(&e);
            match e {
                // Not a copy this server can give: another cache's, or a
                // build, will do.
                Error::Changed { .. } => status(StatusCode::NOT_FOUND),
                _ => status(StatusCode::INTERNAL_SERVER_ERROR),
            }
        }
    };
    if head {
        // hyper sends no body for HEAD, nor its length: said here, as
        // GET sends it (a NAR's is set already when it has one).
        if let Body::Full(Some(data)) = r.body() {
            let length = HeaderValue::from(data.len());
            r.headers_mut().entry(CONTENT_LENGTH).or_insert(length);
        }
        *r.body_mut() = Body::Full(None);
    }
    r
}

/// `f` on a blocking thread.
async fn blocking<T: Send + 'static>(
    what: impl fmt::Display,
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| Error::Task {
            what: what.to_string(),
            source,
        })?
}

/// The valid path with `digest` and what the store records of it.
fn lookup(store: &Store, digest: &StorePathDigest) -> Result<Option<PathInfo>, Error> {
    let store_err = |what: String| {
        move |source| Error::Store {
            what: what.clone(),
            source: Box::new(source),
        }
    };
    let Some(path) = store
        .valid_path_with_digest(digest)
        .map_err(store_err(digest.to_string()))?
    else {
        return Ok(None);
    };
    store.path_info(&path).map_err(store_err(path.to_string()))
}

async fn narinfo(
    state: &Arc<State>,
    digest: StorePathDigest,
    head: bool,
) -> Result<Option<Response<Body>>, Error> {
    let st = state.clone();
    let info = blocking(format!("{digest}.narinfo"), move || {
        lookup(&st.store, &digest)
    })
    .await?;
    let Some(info) = info else {
        return Ok(None);
    };
    let sha256 = if head {
        // Whether it is there is all HEAD asks: no hash to compute.
        narinfo::stand_in(&info)
    } else {
        let compute = {
            let (st, info) = (state.clone(), info.clone());
            move || narinfo::compute(&st.store, &info)
        };
        state.sha256s.get(&info, compute).await?
    };
    let text = narinfo::text(
        &state.store,
        &info,
        sha256,
        state.options.compression,
        state.options.key.as_ref(),
    );
    Ok(Some(full("text/x-nix-narinfo", Bytes::from(text))))
}

/// `Retry-After` of a NAR refused for want of a stream: a guess, since
/// when one frees depends on clients; a few seconds costs a retrying
/// client little.
const RETRY_AFTER_SECONDS: &str = "5";

async fn nar(
    state: &Arc<State>,
    digest: StorePathDigest,
    nar_hash: Vec<u8>,
    compression: Compression,
    head: bool,
) -> Result<Option<Response<Body>>, Error> {
    let st = state.clone();
    let info = blocking(format!("the NAR of {digest}"), move || {
        lookup(&st.store, &digest)
    })
    .await?;
    // Named for another NAR than the store holds now: a stale narinfo's.
    let Some(info) = info.filter(|i| i.nar_hash.as_bytes() == nar_hash) else {
        return Ok(None);
    };
    let mut r = Response::new(Body::Full(None));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-nix-nar"),
    );
    if compression == Compression::None {
        r.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(info.nar_size));
    }
    if head {
        return Ok(Some(r));
    }
    let turn = state.streams.clone().acquire_owned();
    let Ok(Ok(permit)) = tokio::time::timeout(state.options.nar_wait, turn).await else {
        // Every stream taken for a while: clients that never read, say,
        // until the send timeout cuts them. The semaphore is never
        // closed.
        let mut r = status(StatusCode::SERVICE_UNAVAILABLE);
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        return Ok(Some(r));
    };
    let (tx, rx) = mpsc::channel(nar::DEPTH);
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        if let Err(nar::Stopped::Failed(e)) = nar::send(&st.store, &info, compression, tx) {
            st.report(&e);
        }
    });
    *r.body_mut() = Body::Stream { rx, done: false };
    Ok(Some(r))
}

fn full(content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn status(code: StatusCode) -> Response<Body> {
    let reason = code.canonical_reason().unwrap_or("");
    let mut r = full("text/plain", Bytes::from(format!("{reason}\n")));
    *r.status_mut() = code;
    r
}

/// A response's body: in memory, or a NAR as it is dumped.
enum Body {
    Full(Option<Bytes>),
    Stream {
        rx: mpsc::Receiver<nar::Chunk>,
        /// Whether the dump marked its end: a channel closed without it
        /// is a failed dump, and the connection is cut.
        done: bool,
    },
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Body::Stream { rx, done } => {
                if *done {
                    return Poll::Ready(None);
                }
                rx.poll_recv(cx).map(|chunk| match chunk {
                    Some(nar::Chunk::Data(d)) => Some(Ok(Frame::data(d))),
                    Some(nar::Chunk::Done) => {
                        *done = true;
                        None
                    }
                    None => Some(Err(io::Error::other("the NAR stopped before its end"))),
                })
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(data) => data.is_none(),
            Body::Stream { done, .. } => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Body::Stream { .. } => SizeHint::default(),
        }
    }
}
