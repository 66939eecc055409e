//! The elves center: actors (root, scheduler, heartbeat), the HTTP API and configuration.
//!
//! [`start`] runs a whole center on its own thread with its own actix system, so that the
//! `elves-center` binary, `elves up` and the tests all start it the same way.

pub mod actors;
pub mod api;
pub mod config;
pub mod cron_files;
pub mod dispatch;
pub mod error;
pub mod metrics;
pub mod store;
pub mod submit;

use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use config::CenterConfig;
use elves_shared::bus::SharedBus;
use elves_shared::crypto::InstructionSigner;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

/// A running center.
pub struct CenterHandle {
    pub http_addr: SocketAddr,
    pub key_id: String,
    /// The Ed25519 public key agents need to trust this center's instructions (hex).
    pub public_key_hex: String,
    server: actix_web::dev::ServerHandle,
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
            futures::executor::block_on(self.server.stop(true));
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

struct Started {
    server: actix_web::dev::ServerHandle,
    system: actix::System,
    public_key_hex: String,
}

/// Starts a center serving HTTP on `listener` and talking on `bus`; returns once it is ready.
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

pub fn start_with(
    config: CenterConfig,
    listener: TcpListener,
    bus: SharedBus,
    ownership: BusOwnership,
) -> anyhow::Result<CenterHandle> {
    let http_addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    let signer = Arc::new(
        InstructionSigner::load_or_create(&config.keys.key_id, &config.signing_key_path())
            .context("loading the center's signing key")?,
    );
    let key_id = config.keys.key_id.clone();
    let (ready_sender, ready_receiver) = std::sync::mpsc::channel::<anyhow::Result<Started>>();
    let thread = std::thread::Builder::new()
        .name("elves-center".to_string())
        .spawn(move || {
            let system = actix::System::new();
            let bus_to_close = (ownership == BusOwnership::Owned).then(|| bus.clone());
            let setup = system.block_on(serve(config, listener, bus, signer));
            match setup {
                Ok((server, public_key_hex)) => {
                    let handle = server.handle();
                    let started = Started {
                        server: handle,
                        system: actix::System::current(),
                        public_key_hex,
                    };
                    if ready_sender.send(Ok(started)).is_err() {
                        return;
                    }
                    if let Err(err) = system.block_on(server) {
                        log::error!("center: http server: {err}");
                    }
                    if let Some(bus) = bus_to_close {
                        system.block_on(bus.close());
                    }
                }
                Err(err) => {
                    let _ = ready_sender.send(Err(err));
                }
            }
        })
        .context("spawning the center thread")?;
    let started = ready_receiver
        .recv()
        .context("the center thread died while starting")??;
    log::info!("center: serving http on {http_addr}");
    Ok(CenterHandle {
        http_addr,
        key_id,
        public_key_hex: started.public_key_hex,
        server: started.server,
        system: started.system,
        thread: Some(thread),
    })
}

async fn serve(
    config: CenterConfig,
    listener: TcpListener,
    bus: SharedBus,
    signer: Arc<InstructionSigner>,
) -> anyhow::Result<(actix_web::dev::Server, String)> {
    let mut config = config;
    if config.apps.public_url.is_empty() {
        // Agents download packages from here unless `apps.public_url` names another address.
        let local = listener
            .local_addr()
            .context("reading the listener's address")?;
        config.apps.public_url = format!("http://{local}");
    }
    let metrics = Arc::new(metrics::Metrics::default());
    let public_key_hex = signer.public_key_hex();
    let database_url = config.database_url();
    let store = tokio::task::spawn_blocking(move || store::Store::open(&database_url))
        .await
        .context("opening the database")?
        .context("opening the database")?;
    let submissions = bus
        .consume(
            elves_shared::bus::QueueSpec {
                name: bus.queue_name("center.submit"),
                bindings: vec![elves_shared::wire::routing::CENTER_SUBMIT.to_string()],
                durable: true,
            },
            64,
        )
        .await
        .context("consuming submissions")?;
    let instance =
        load_or_create_instance(&config.data_dir).context("reading the center's instance id")?;
    let root = actors::root::Root::start(
        &config,
        bus.clone(),
        signer,
        metrics.clone(),
        store.clone(),
        instance,
    )
    .await
    .context("connecting to the bus")?;
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
        bus,
    });
    actix_rt::spawn(submit::consume_submissions(submissions, state.clone()));
    let server =
        HttpServer::new(move || App::new().app_data(state.clone()).configure(api::configure))
            .workers(workers)
            .disable_signals()
            .listen(listener)
            .context("listening for http")?
            .run();
    Ok((server, public_key_hex))
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

/// Runs a center from a configuration file until SIGINT or SIGTERM: the `elves-center` binary
/// and `elves center`.
pub fn run_until_signal(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = config::CenterConfig::load(Some(config_path))?;
    actors::cron::enable_sighup_reload();
    let bus = elves_shared::bus::open(&config.bus.url, &config.bus.namespace)?;
    let listener = TcpListener::bind(&config.http.listen)
        .with_context(|| format!("binding http.listen {}", config.http.listen))?;
    let center = start_with(config, listener, bus, BusOwnership::Owned)?;
    eprintln!("elves-center: listening on http://{}", center.http_addr);
    eprintln!(
        "elves-center: instruction key {} {}",
        center.key_id, center.public_key_hex
    );
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the signal runtime")?;
    signals.block_on(wait_for_stop_signal())?;
    log::info!("center: stopping");
    center.stop();
    Ok(())
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}
