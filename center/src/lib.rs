//! The elves center: actors (root, scheduler, heartbeat), the HTTP API and configuration.
//!
//! [`start`] runs a whole center on its own thread with its own actix system, so that the
//! `elves-center` binary, `elves up` and the tests all start it the same way. A center whose
//! broker cannot be reached yet serves HTTP anyway (`/healthz`: 503, waiting for the broker)
//! and keeps trying, like the agent: boot order and broker restarts do not stop it.

pub mod actors;
pub mod api;
pub mod config;
pub mod cron_files;
pub mod dispatch;
pub mod error;
pub mod http_guard;
pub mod metrics;
pub mod store;
pub mod submit;
pub mod ui;

use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use config::CenterConfig;
use elves_shared::bus::{BusError, SharedBus};
use elves_shared::crypto::InstructionSigner;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

/// A running center.
pub struct CenterHandle {
    pub http_addr: SocketAddr,
    pub key_id: String,
    /// The Ed25519 public key agents need to trust this center's instructions (hex).
    pub public_key_hex: String,
    lifecycle: Arc<Lifecycle>,
    system: actix::System,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CenterHandle {
    /// Stops accepting requests, lets in-flight ones finish, then stops the actors.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Blocks until the center stops (by a signal or an error).
    pub fn wait(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            if let Some(server) = self.lifecycle.request_stop() {
                futures::executor::block_on(server.stop(true));
            }
            self.system.stop();
            let _ = thread.join();
        }
    }
}

impl Drop for CenterHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What the caller of [`start_with`] and the center's thread share about stopping: the HTTP
/// server serving now (the one that waits for the broker, then the real one), and whether a
/// stop was asked, so that the thread starts no server after it.
#[derive(Default)]
struct Lifecycle {
    state: std::sync::Mutex<LifecycleState>,
    stop_asked: tokio::sync::Notify,
}

#[derive(Default)]
struct LifecycleState {
    stopping: bool,
    server: Option<actix_web::dev::ServerHandle>,
}

impl Lifecycle {
    fn state(&self) -> std::sync::MutexGuard<'_, LifecycleState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `server` as the one serving; false once a stop was asked: then it must not run.
    fn serving(&self, server: actix_web::dev::ServerHandle) -> bool {
        let mut state = self.state();
        if state.stopping {
            return false;
        }
        state.server = Some(server);
        true
    }

    /// Marks the center as stopping; returns the server to stop.
    fn request_stop(&self) -> Option<actix_web::dev::ServerHandle> {
        let server = {
            let mut state = self.state();
            state.stopping = true;
            state.server.take()
        };
        self.stop_asked.notify_one();
        server
    }

    async fn stop_requested(&self) {
        if self.state().stopping {
            return;
        }
        self.stop_asked.notified().await;
    }
}

/// Starts a center serving HTTP on `listener` and talking on `bus`; returns once it is ready,
/// or once it serves HTTP while waiting for the broker (see [`start_with`]).
pub fn start(
    config: CenterConfig,
    listener: TcpListener,
    bus: SharedBus,
) -> anyhow::Result<CenterHandle> {
    start_with(config, listener, bus, BusOwnership::Shared)
}

/// Whether the center closes its bus when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusOwnership {
    /// Others use the bus too (tests, `elves up`): it stays open.
    Shared,
    /// The center's process made the bus for it: it is closed after the last request and
    /// before the runtime goes, so that the broker connection ends cleanly rather than
    /// failing under a runtime that is shutting down.
    Owned,
}

/// Starts a center on its own thread. Returns once it serves HTTP: ready when the bus could be
/// reached at once; otherwise it answers `/healthz` with 503 "waiting for the broker" and every
/// v2 call with an error, and keeps trying the bus with capped exponential backoff, starting
/// for real once the bus answers (a broker that starts after the center, or restarts).
pub fn start_with(
    config: CenterConfig,
    listener: TcpListener,
    bus: SharedBus,
    ownership: BusOwnership,
) -> anyhow::Result<CenterHandle> {
    let http_addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    let keyring = Arc::new(
        dispatch::keyring::KeyRing::load(&config).context("loading the center's signing keys")?,
    );
    let tls = match config.http.tls() {
        Some((cert, key)) => Some(
            elves_shared::tls::server_config(cert, key)
                .context("loading the HTTPS certificate (http.tls_cert, http.tls_key)")?,
        ),
        None => None,
    };
    let signer = keyring.signer();
    let key_id = signer.key_id();
    let public_key_hex = signer.public_key_hex();
    let lifecycle = Arc::new(Lifecycle::default());
    let (ready_sender, ready_receiver) =
        std::sync::mpsc::channel::<anyhow::Result<actix::System>>();
    let thread_lifecycle = lifecycle.clone();
    let thread = std::thread::Builder::new()
        .name("elves-center".to_string())
        .spawn(move || {
            // The actors' store calls and signatures run on this runtime's blocking pool;
            // bounded, so that a burst of calls queues there instead of starting hundreds of
            // threads that would all wait for one of the store's few connections.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(MAX_BLOCKING_THREADS)
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = ready_sender.send(Err(anyhow::anyhow!("starting the runtime: {err}")));
                    return;
                }
            };
            let system = actix::System::with_tokio_rt(move || runtime);
            let bus_to_close = (ownership == BusOwnership::Owned).then(|| bus.clone());
            let center = Center {
                bus,
                signer,
                keyring,
                lifecycle: thread_lifecycle,
                tls,
            };
            system.block_on(center.run(config, listener, ready_sender));
            if let Some(bus) = bus_to_close {
                system.block_on(bus.close());
            }
        })
        .context("spawning the center thread")?;
    let system = ready_receiver
        .recv()
        .context("the center thread died while starting")??;
    log::info!("center: serving http on {http_addr}");
    Ok(CenterHandle {
        http_addr,
        key_id,
        public_key_hex,
        lifecycle,
        system,
        thread: Some(thread),
    })
}

/// The blocking pool of each runtime of the center (the actors' and each HTTP worker's):
/// store calls, which wait for one of the store's connections, and signatures.
const MAX_BLOCKING_THREADS: usize = 32;

/// First wait between two attempts to reach the broker; doubled after each failure.
const FIRST_BROKER_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two attempts: a broker that comes back is noticed within it.
const MAX_BROKER_BACKOFF: Duration = Duration::from_secs(5);

/// What the center's thread owns.
struct Center {
    bus: SharedBus,
    signer: Arc<InstructionSigner>,
    keyring: Arc<dispatch::keyring::KeyRing>,
    lifecycle: Arc<Lifecycle>,
    /// Serve HTTPS with this (`http.tls_cert`, `http.tls_key`); `None`: plain HTTP.
    tls: Option<rustls::ServerConfig>,
}

/// What is set up before the bus is needed.
struct Prepared {
    config: CenterConfig,
    metrics: Arc<metrics::Metrics>,
    store: store::Store,
    instance: String,
}

/// What exists once the bus answered.
struct Connected {
    root: actix::Addr<actors::root::Root>,
    submissions: elves_shared::bus::Consumer,
}

type ReadySender = std::sync::mpsc::Sender<anyhow::Result<actix::System>>;

impl Center {
    /// The center's whole life on its thread: `ready` gets the outcome of the start (once the
    /// center serves HTTP, ready or waiting for the broker); returns when the server stopped.
    async fn run(self, config: CenterConfig, listener: TcpListener, ready: ReadySender) {
        let prepared = match prepare(config, &listener).await {
            Ok(prepared) => prepared,
            Err(err) => {
                let _ = ready.send(Err(err));
                return;
            }
        };
        let mut ready = Some(ready);
        let connected = match self.connect(&prepared).await {
            Ok(connected) => connected,
            // Waiting cannot mend a broker that holds the center's queues in another type.
            Err(err @ BusError::Misconfigured(_)) => {
                let _ = ready.take().map(|ready| ready.send(Err(err.into())));
                return;
            }
            Err(err) => {
                log::warn!(
                    "center: the broker is not reachable yet, serving http while waiting: {err}"
                );
                let waiting = Arc::new(api::ops::BrokerWait::new(&err));
                let server = match listener
                    .try_clone()
                    .context("sharing the http listener")
                    .and_then(|listener| {
                        waiting_server(listener, self.tls.clone(), waiting.clone())
                    }) {
                    Ok(server) => server,
                    Err(err) => {
                        let _ = ready.take().map(|ready| ready.send(Err(err)));
                        return;
                    }
                };
                let waiting_handle = server.handle();
                if !self.lifecycle.serving(waiting_handle.clone()) {
                    return;
                }
                actix_rt::spawn(server);
                if let Some(ready) = ready.take() {
                    if ready.send(Ok(actix::System::current())).is_err() {
                        waiting_handle.stop(true).await;
                        return;
                    }
                }
                let connected = self.wait_for_broker(&prepared, &waiting).await;
                waiting_handle.stop(true).await;
                match connected {
                    Some(connected) => connected,
                    None => return,
                }
            }
        };
        let server = match self.serve(prepared, connected, listener).await {
            Ok(server) => server,
            Err(err) => {
                match ready.take() {
                    Some(ready) => {
                        let _ = ready.send(Err(err));
                    }
                    None => log::error!("center: cannot start after the broker answered: {err:#}"),
                }
                return;
            }
        };
        if !self.lifecycle.serving(server.handle()) {
            return;
        }
        if let Some(ready) = ready.take() {
            if ready.send(Ok(actix::System::current())).is_err() {
                return;
            }
        }
        if let Err(err) = server.await {
            log::error!("center: http server: {err}");
        }
    }

    /// Consumes the center's queues and starts its actors: all of it or nothing (the
    /// consumers of a failed attempt end when they are dropped).
    async fn connect(&self, prepared: &Prepared) -> Result<Connected, BusError> {
        let bus = &self.bus;
        let submissions = bus
            .consume(
                elves_shared::bus::QueueSpec {
                    name: bus.queue_name("center.submit"),
                    bindings: vec![elves_shared::wire::routing::CENTER_SUBMIT.to_string()],
                    durable: true,
                },
                64,
            )
            .await?;
        let root = actors::root::Root::start(
            &prepared.config,
            bus.clone(),
            self.signer.clone(),
            prepared.metrics.clone(),
            prepared.store.clone(),
            prepared.instance.clone(),
        )
        .await?;
        Ok(Connected { root, submissions })
    }

    /// Tries [`Center::connect`] with capped exponential backoff until it succeeds (`Some`) or
    /// the center is stopped (`None`); each failure is logged and shown by `/healthz`.
    async fn wait_for_broker(
        &self,
        prepared: &Prepared,
        waiting: &api::ops::BrokerWait,
    ) -> Option<Connected> {
        let mut backoff = FIRST_BROKER_BACKOFF;
        loop {
            tokio::select! {
                () = self.lifecycle.stop_requested() => return None,
                () = tokio::time::sleep(backoff) => {}
            }
            let attempt = tokio::select! {
                () = self.lifecycle.stop_requested() => return None,
                attempt = self.connect(prepared) => attempt,
            };
            match attempt {
                Ok(connected) => {
                    log::info!(
                        "center: the broker answered after {} failed attempt(s); starting",
                        waiting.attempts()
                    );
                    return Some(connected);
                }
                Err(err) => {
                    waiting.failed(&err);
                    backoff = (backoff * 2).min(MAX_BROKER_BACKOFF);
                    log::warn!(
                        "center: waiting for the broker (attempt {} failed, next in {backoff:?}): {err}",
                        waiting.attempts()
                    );
                }
            }
        }
    }

    /// The center proper: the API on `listener`, fed by the actors `connected` started.
    async fn serve(
        &self,
        prepared: Prepared,
        connected: Connected,
        listener: TcpListener,
    ) -> anyhow::Result<actix_web::dev::Server> {
        let Prepared {
            config,
            metrics,
            store,
            ..
        } = prepared;
        let Connected { root, submissions } = connected;
        let children = root
            .send(actors::root::GetChildren)
            .await
            .context("asking root for its children")?;
        actors::cron::reload_on_sighup(children.cron.clone());
        let workers = config.http.workers;
        let state = web::Data::new(api::ApiState {
            root,
            config,
            children,
            metrics,
            store,
            bus: self.bus.clone(),
            keyring: self.keyring.clone(),
        });
        actix_rt::spawn(submit::consume_submissions(submissions, state.clone()));
        let dashboard = web::Data::new(ui::Dashboard::new(&self.signer));
        let local_addr = listener
            .local_addr()
            .context("reading the listener's address")?;
        // actix-web's HttpServer, put together by hand so that every connection, plain or TLS,
        // goes through `http_guard` (heads too large for the parser answered with the API's
        // envelope).
        macro_rules! http_service {
            () => {
                actix_http::HttpService::build()
                    .keep_alive(actix_http::KeepAlive::default())
                    .client_request_timeout(Duration::from_secs(5))
                    .client_disconnect_timeout(Duration::from_secs(1))
                    .h1_allow_half_closed(true)
                    .local_addr(local_addr)
                    .finish(actix_service::map_config(
                        App::new()
                            .wrap(api::envelope_errors())
                            .app_data(state.clone())
                            .app_data(dashboard.clone())
                            .configure(api::configure)
                            .configure(ui::configure),
                        |_| actix_web::dev::AppConfig::default(),
                    ))
            };
        }
        use actix_service::ServiceFactoryExt as _;
        let builder = actix_server::Server::build()
            .workers(workers)
            .worker_max_blocking_threads(MAX_BLOCKING_THREADS)
            .disable_signals();
        let builder = match self.tls.clone() {
            None => builder.listen("elves-http", listener, move || {
                actix_service::fn_service(|io: actix_rt::net::TcpStream| async move {
                    let peer = io.peer_addr().ok();
                    let _ = io.set_nodelay(true);
                    Ok::<_, actix_http::error::DispatchError>((
                        http_guard::GuardedStream::new(io),
                        actix_http::Protocol::Http1,
                        peer,
                    ))
                })
                .and_then(http_service!())
            }),
            Some(tls) => builder.listen("elves-https", listener, move || {
                use actix_tls::accept::{rustls_0_23, TlsError};
                rustls_0_23::Acceptor::new(tls.clone())
                    .map_err(TlsError::into_service_error)
                    .map(|io: rustls_0_23::TlsStream<actix_rt::net::TcpStream>| {
                        let peer = io.get_ref().0.peer_addr().ok();
                        (
                            http_guard::GuardedStream::new(io),
                            actix_http::Protocol::Http1,
                            peer,
                        )
                    })
                    .and_then(http_service!().map_err(TlsError::Service))
            }),
        };
        let server = builder.context("listening for http")?.run();
        Ok(server)
    }
}

/// Opens the database and reads the instance id: what the center needs before the bus.
async fn prepare(config: CenterConfig, listener: &TcpListener) -> anyhow::Result<Prepared> {
    let mut config = config;
    if config.apps.public_url.is_empty() {
        // Agents download packages from here, in the API's scheme, unless `apps.public_url`
        // names another address.
        let local = listener
            .local_addr()
            .context("reading the listener's address")?;
        config.apps.public_url = format!("{}://{local}", config.http.scheme());
    }
    let metrics = Arc::new(metrics::Metrics::default());
    let database_url = config.database_url();
    let store = tokio::task::spawn_blocking(move || store::Store::open(&database_url))
        .await
        .context("opening the database")?
        .context("opening the database")?;
    let instance =
        load_or_create_instance(&config.data_dir).context("reading the center's instance id")?;
    Ok(Prepared {
        config,
        metrics,
        store,
        instance,
    })
}

/// The HTTP server of a center waiting for the broker: `/healthz` says so with 503, v2 calls
/// get an error at once. Without keep-alive, so that no client holds a connection to it when
/// the real server takes the listener over.
fn waiting_server(
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    waiting: Arc<api::ops::BrokerWait>,
) -> anyhow::Result<actix_web::dev::Server> {
    let waiting = web::Data::from(waiting);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(waiting.clone())
            .configure(api::ops::configure_waiting)
    })
    .workers(1)
    .keep_alive(actix_web::http::KeepAlive::Disabled)
    .disable_signals();
    Ok(match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls),
        None => server.listen(listener),
    }
    .context("listening for http")?
    .run())
}

/// This center's name in `dispatched_by`: stable across restarts (kept in the data directory),
/// so that a restarted center finds the tasks it had claimed.
fn load_or_create_instance(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("instance");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        _ => {
            std::fs::create_dir_all(data_dir)?;
            let instance = elves_shared::wire::TaskId::random().to_string();
            std::fs::write(&path, &instance)?;
            Ok(instance)
        }
    }
}

/// Keeps the center's memory near what it holds. glibc serves a freed buffer over its mmap
/// threshold back to the OS, but raises that threshold to the largest buffer freed so far,
/// after which buffers of that size stay in one of its per-thread arenas (up to eight per
/// core): output messages of 1 MiB and the rows made of them then left 19 MB more resident
/// after one fast writer (`cargo bench --bench live_output`). A fixed threshold and two arenas
/// leave 7 MB. An operator's own `MALLOC_ARENA_MAX` or `MALLOC_MMAP_THRESHOLD_` wins. Call it
/// before the center starts its threads.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD_BYTES: libc::c_int = 128 * 1024;
        const ARENAS: libc::c_int = 2;
        // SAFETY: mallopt only sets allocator parameters; it is called before other threads
        // allocate, as glibc asks.
        unsafe {
            if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
            }
            if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
                libc::mallopt(libc::M_ARENA_MAX, ARENAS);
            }
        }
    }
}

/// Runs a center from a configuration file until SIGINT or SIGTERM: the `elves-center` binary
/// and `elves center`.
pub fn run_until_signal(config_path: &std::path::Path) -> anyhow::Result<()> {
    tune_allocator();
    let config = config::CenterConfig::load(Some(config_path))?;
    actors::cron::enable_sighup_reload();
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the signal runtime")?;
    // SIGHUP's default action ends the process; the cron reload handler takes it only once
    // the center is connected, so until then (a broker that is not up yet) it is held here.
    let hangups = signals
        .block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) })
        .context("installing the SIGHUP handler")?;
    // Taken before the center says it is ready: a SIGTERM right after (`systemctl stop` of a
    // unit that just started) stops it as any other, instead of ending the process unclean.
    let stops = signals
        .block_on(async { StopSignals::install() })
        .context("installing the SIGTERM and SIGINT handlers")?;
    let bus = elves_shared::bus::open_configured(
        &config.bus.url,
        &config.bus.namespace,
        config.bus.queue_type,
        &config.bus.tls(),
    )?;
    let listener = TcpListener::bind(&config.http.listen)
        .with_context(|| format!("binding http.listen {}", config.http.listen))?;
    let scheme = config.http.scheme();
    let center = start_with(config, listener, bus, BusOwnership::Owned)?;
    eprintln!("elves-center: listening on {scheme}://{}", center.http_addr);
    eprintln!(
        "elves-center: dashboard at {scheme}://{}/ui/",
        center.http_addr
    );
    eprintln!(
        "elves-center: instruction key {} {}",
        center.key_id, center.public_key_hex
    );
    // systemd's Type=notify: started means serving HTTP. Without systemd (no NOTIFY_SOCKET)
    // this does nothing. The variable stays: removing it races other threads reading the
    // environment, and the unit's NotifyAccess=main ignores anyone else using it.
    if let Err(err) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        log::warn!("center: telling systemd it is ready: {err}");
    }
    signals.block_on(wait_for_stop_signal(stops, hangups));
    log::info!("center: stopping");
    center.stop();
    Ok(())
}

/// SIGTERM (what systemd sends) and SIGINT (Ctrl-C), registered at once: from then on
/// neither ends the process by its default action.
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }
}

async fn wait_for_stop_signal(mut stops: StopSignals, mut hangups: tokio::signal::unix::Signal) {
    loop {
        tokio::select! {
            _ = stops.interrupt.recv() => return,
            _ = stops.terminate.recv() => return,
            // The cron reload handler sees the same signal once the center is connected.
            Some(()) = hangups.recv() => log::debug!("center: SIGHUP"),
        }
    }
}
