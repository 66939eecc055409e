//! A private RabbitMQ node for the tests that start, stop or restart a broker: its own node
//! name, ports, data, logs and (empty) plugin list under a temp directory, so that the shared
//! broker is never touched. Starting one takes a few seconds (5–8 s on 2 busy cores).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a node may take to accept AMQP connections.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

static NODES_STARTED: AtomicU32 = AtomicU32::new(0);

/// The server script itself: the `rabbitmq-server` on the PATH may switch to the `rabbitmq`
/// user, who cannot write to our temp directory.
fn server_script() -> PathBuf {
    let direct = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if direct.exists() {
        direct
    } else {
        PathBuf::from("rabbitmq-server")
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TLS listener of a node beside its plain one (`listeners.ssl.default`), with the PEM files
/// of `ssl_options`.
pub struct NodeTls {
    pub port: u16,
    /// The CA the node checks client certificates against.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Refuse a client without a certificate (`verify_peer`, `fail_if_no_peer_cert`).
    pub require_client_cert: bool,
}

impl NodeTls {
    /// Its lines of `rabbitmq.conf`.
    pub fn conf(&self) -> String {
        let mut conf = format!(
            "listeners.ssl.default = 127.0.0.1:{}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n",
            self.port,
            self.ca.display(),
            self.cert.display(),
            self.key.display()
        );
        if self.require_client_cert {
            conf.push_str(
                "ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n",
            );
        }
        conf
    }
}

pub struct RabbitNode {
    pub port: u16,
    /// The TLS listener's port, for a node started with [`RabbitNode::start_with_tls`].
    pub tls_port: Option<u16>,
    pub node_name: String,
    /// The management plugin's HTTP port, when started with it ([`RabbitNode::start_with_management`]).
    pub management_port: Option<u16>,
    dist_port: u16,
    dir: tempfile::TempDir,
    server: Option<Child>,
}

impl RabbitNode {
    /// Starts a node whose AMQP listener is `port` and waits until it accepts connections.
    pub async fn start_on(port: u16) -> RabbitNode {
        RabbitNode::start_configured(port, "").await
    }

    /// As [`RabbitNode::start_on`], with a TLS listener beside the plain one; returns once
    /// both take connections.
    pub async fn start_with_tls(port: u16, tls: &NodeTls) -> RabbitNode {
        let mut node = RabbitNode::start_configured(port, &tls.conf()).await;
        node.tls_port = Some(tls.port);
        let started = Instant::now();
        // The listeners start together; this only guards against a slow second one.
        while std::net::TcpStream::connect(("127.0.0.1", tls.port)).is_err() {
            assert!(
                started.elapsed() < START_TIMEOUT,
                "rabbitmq node {} has no TLS listener on {}:\n{}",
                node.node_name,
                tls.port,
                node.output_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        node
    }

    /// `amqps://` URL of this node's TLS listener, by IP address (the test certificates name
    /// 127.0.0.1).
    pub fn tls_url(&self) -> String {
        let port = self
            .tls_port
            .expect("the node was started with a TLS listener");
        format!("amqps://guest:guest@127.0.0.1:{port}/%2f")
    }

    /// As [`RabbitNode::start_on`], with `conf` as its `rabbitmq.conf` (e.g. the memory
    /// watermark of a benchmark's broker).
    pub async fn start_configured(port: u16, conf: &str) -> RabbitNode {
        RabbitNode::start_with_advanced(port, conf, "").await
    }

    /// As [`RabbitNode::start_configured`], with `advanced` as its `advanced.config` (Erlang
    /// terms, for settings `rabbitmq.conf` has no key for).
    pub async fn start_with_advanced(port: u16, conf: &str, advanced: &str) -> RabbitNode {
        RabbitNode::start_full(port, conf, advanced, None).await
    }

    /// A node with the management plugin (its HTTP API on `management_port`, localhost only),
    /// for the tests that manage broker users through it; returns once that API answers.
    pub async fn start_with_management(port: u16, management_port: u16) -> RabbitNode {
        let conf =
            format!("management.tcp.port = {management_port}\nmanagement.tcp.ip = 127.0.0.1\n");
        let node = RabbitNode::start_full(port, &conf, "", Some(management_port)).await;
        node.wait_for_management().await;
        node
    }

    async fn start_full(
        port: u16,
        conf: &str,
        advanced: &str,
        management_port: Option<u16>,
    ) -> RabbitNode {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rabbitmq.conf"), conf).unwrap();
        if !advanced.is_empty() {
            std::fs::write(dir.path().join("advanced.config"), advanced).unwrap();
        }
        std::fs::write(dir.path().join("rabbitmq-env.conf"), "").unwrap();
        let plugins = if management_port.is_some() {
            "[rabbitmq_management].\n"
        } else {
            "[].\n"
        };
        std::fs::write(dir.path().join("enabled_plugins"), plugins).unwrap();
        let node_name = format!(
            "elves-test-{}-{}@localhost",
            std::process::id(),
            NODES_STARTED.fetch_add(1, Ordering::SeqCst)
        );
        let mut node = RabbitNode {
            port,
            tls_port: None,
            node_name,
            management_port,
            dist_port: free_port(),
            dir,
            server: None,
        };
        node.start().await;
        node
    }

    /// `amqp://` URL of this node (the default guest user, allowed from localhost).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The management API as its administrator (the default guest user, from localhost).
    pub fn management_url(&self) -> String {
        let port = self
            .management_port
            .expect("this node was started without the management plugin");
        format!("http://guest:guest@127.0.0.1:{port}")
    }

    async fn wait_for_management(&self) {
        let port = self.management_port.unwrap_or_default();
        let url = format!("http://127.0.0.1:{port}/api/overview");
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let answered = http
                .get(&url)
                .basic_auth("guest", Some("guest"))
                .send()
                .await;
            if answered.is_ok_and(|response| response.status().is_success()) {
                return;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "the management API of {} did not answer within {START_TIMEOUT:?}:\n{}",
                self.node_name,
                self.output_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// (Re)starts the node with the data it had; returns once it accepts AMQP connections.
    pub async fn start(&mut self) {
        assert!(
            self.server.is_none(),
            "node {} already runs",
            self.node_name
        );
        let base = self.dir.path();
        let log = std::fs::File::create(base.join("server.out")).unwrap();
        let server = Command::new(server_script())
            .env("HOME", base)
            .env("RABBITMQ_NODENAME", &self.node_name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", base.join("log"))
            .env("RABBITMQ_CONFIG_FILE", base.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                base.join("advanced.config"),
            )
            .env("RABBITMQ_CONF_ENV_FILE", base.join("rabbitmq-env.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                base.join("enabled_plugins"),
            )
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .current_dir(base)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group: the stop can reach the Erlang VM behind the script.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|err| panic!("starting {}: {err}", server_script().display()));
        self.server = Some(server);
        self.wait_until_accepting().await;
    }

    async fn wait_until_accepting(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.server.as_mut().and_then(|s| s.try_wait().unwrap()) {
                panic!(
                    "rabbitmq node {} exited with {status} while starting:\n{}",
                    self.node_name,
                    self.output_tail()
                );
            }
            if accepts_amqp(&self.url()).await {
                return;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "rabbitmq node {} did not accept AMQP within {START_TIMEOUT:?}:\n{}",
                self.node_name,
                self.output_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the node (SIGTERM: the script stops the VM cleanly), killing its process group
    /// if it takes longer than [`STOP_TIMEOUT`]. Its data stays for [`RabbitNode::start`].
    pub fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let pid = i32::try_from(server.id()).unwrap();
        // SAFETY: signals a process this node started and has not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let asked = Instant::now();
        while asked.elapsed() < STOP_TIMEOUT {
            if server.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_group(pid);
        let _ = server.wait();
    }

    /// The pid of the server script, whose process group holds the Erlang VM.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn output_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.out")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// How long one `rabbitmqctl` command may take (the CLI alone starts in 1–3 s on busy cores).
const CTL_TIMEOUT: Duration = Duration::from_secs(60);

impl RabbitNode {
    /// Starts `n` nodes that can form a cluster (one Erlang cookie in each node's home, where
    /// both the server and `rabbitmqctl` read it) and joins the others to the first; returns
    /// once every node accepts AMQP connections as a member of the cluster.
    pub async fn start_cluster(n: usize) -> Vec<RabbitNode> {
        let cookie = format!("ELVESTEST{:016X}", rand::random::<u64>());
        let mut nodes: Vec<RabbitNode> = (0..n).map(|_| RabbitNode::unstarted(&cookie)).collect();
        futures::future::join_all(nodes.iter_mut().map(RabbitNode::start)).await;
        let seed = nodes[0].node_name.clone();
        for node in &mut nodes[1..] {
            node.join_cluster(&seed).await;
        }
        nodes
    }

    /// A node with its own directory, configuration and `cookie`, not started yet.
    fn unstarted(cookie: &str) -> RabbitNode {
        let dir = tempfile::tempdir().unwrap();
        for file in ["rabbitmq.conf", "rabbitmq-env.conf"] {
            std::fs::write(dir.path().join(file), "").unwrap();
        }
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        let cookie_path = dir.path().join(".erlang.cookie");
        std::fs::write(&cookie_path, cookie).unwrap();
        // Erlang refuses a cookie file that others can read.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&cookie_path, std::fs::Permissions::from_mode(0o400)).unwrap();
        RabbitNode {
            port: free_port(),
            node_name: format!(
                "elves-test-{}-{}@localhost",
                std::process::id(),
                NODES_STARTED.fetch_add(1, Ordering::SeqCst)
            ),
            management_port: None,
            dist_port: free_port(),
            tls_port: None,
            dir,
            server: None,
        }
    }

    /// Makes this running node a member of the cluster of `seed` (a node name) and waits until
    /// it accepts AMQP connections again.
    pub async fn join_cluster(&mut self, seed: &str) {
        for args in [
            vec!["stop_app"],
            vec!["join_cluster", seed],
            vec!["start_app"],
        ] {
            self.ctl(args).await;
        }
        self.wait_until_accepting().await;
    }

    /// `rabbitmqctl -n <this node> <args>`, run on the blocking pool; its stdout. Fails the test
    /// when the command fails or takes longer than [`CTL_TIMEOUT`].
    pub async fn ctl(&self, args: Vec<&str>) -> String {
        let node = self.node_name.clone();
        let home = self.dir.path().to_path_buf();
        let args: Vec<String> = args.into_iter().map(str::to_string).collect();
        tokio::task::spawn_blocking(move || rabbitmqctl(&home, &node, &args))
            .await
            .unwrap()
    }
}

/// Runs `rabbitmqctl -n node args` with `home` (which holds the node's Erlang cookie).
fn rabbitmqctl(home: &Path, node: &str, args: &[String]) -> String {
    let direct = Path::new("/usr/lib/rabbitmq/bin/rabbitmqctl");
    let program = if direct.exists() {
        direct
    } else {
        Path::new("rabbitmqctl")
    };
    let call = rand::random::<u32>();
    let out_path = home.join(format!("ctl-{call}.out"));
    let err_path = home.join(format!("ctl-{call}.err"));
    let mut child = Command::new(program)
        .env("HOME", home)
        .arg("-n")
        .arg(node)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|err| panic!("starting {}: {err}", program.display()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > CTL_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rabbitmqctl -n {node} {args:?} took more than {CTL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let errors = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    assert!(
        status.success(),
        "rabbitmqctl -n {node} {args:?}: {status}\n{output}{errors}"
    );
    output
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Ends whatever of the node's process group is left (the VM, its port programs).
fn kill_group(pgid: i32) {
    // SAFETY: the group was created for this node by `process_group(0)`.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

async fn accepts_amqp(url: &str) -> bool {
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let attempt = tokio::time::timeout(
        Duration::from_secs(5),
        lapin::Connection::connect(url, properties),
    )
    .await;
    match attempt {
        Ok(Ok(connection)) => {
            let _ = connection.close(200, "probe").await;
            true
        }
        _ => false,
    }
}
