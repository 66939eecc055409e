//! TLS where the platform crosses a network: a private RabbitMQ node with a TLS listener on a
//! second port (client certificates required), a center serving HTTPS, an agent reaching
//! both, with certificates this test makes (rcgen). The center and the agent are the `elves`
//! binary in child processes, configured by files, as an operator runs them.

use crate::harness::rabbit_node::{free_port, NodeTls, RabbitNode};
use crate::harness::{install_test_apps, unix_now_s, wait_until, BusKind, AUTH_ID, AUTH_KEY};
use elves_shared::bus::{self, QueueSpec};
use elves_shared::sign::{self, SignType};
use elves_shared::tls::ClientTls;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A CA and the certificates it signed, as PEM files in `dir`.
struct Pki {
    /// Holds the files for as long as the test uses them.
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A CA that signed nothing here.
    other_ca: PathBuf,
}

struct Issuer {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn new_ca(name: &str) -> Issuer {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    Issuer { cert, key }
}

/// A leaf certificate signed by `issuer`: `names` are its subject alternative names (an IP
/// address string becomes an IP SAN).
fn leaf(
    issuer: &Issuer,
    common_name: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(
        names
            .iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let ca = new_ca("elves test CA");
        let (server_pem, server_key_pem) = leaf(
            &ca,
            "elves test server",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_pem, client_key_pem) = leaf(
            &ca,
            "elves test client",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let other = new_ca("another CA");
        Pki {
            ca: write("ca.pem", &ca.cert.pem()),
            server_cert: write("server.pem", &server_pem),
            server_key: write("server.key", &server_key_pem),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client.key", &client_key_pem),
            other_ca: write("other-ca.pem", &other.cert.pem()),
            _dir: dir,
        }
    }

    fn client_tls(&self) -> ClientTls {
        ClientTls {
            ca: Some(self.ca.clone()),
            cert: Some(self.client_cert.clone()),
            key: Some(self.client_key.clone()),
        }
    }

    /// An HTTP client that trusts this CA only.
    fn https_client(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca).unwrap();
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }
}

/// A child process that is killed when the test ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `elves <args>` in `dir` (so that no default path reaches the repository), its output
/// to `dir/<log>`.
fn spawn_elves(args: &[&str], dir: &Path, log: &str) -> ChildGuard {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_elves"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    ChildGuard(child)
}

fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// A signed v2 call (MD5, form) through `client`.
async fn call(
    client: &reqwest::Client,
    base: &str,
    endpoint: &str,
    params: &[(&str, &str)],
) -> Value {
    let path = format!("/api/v2/{endpoint}");
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    pairs.push(("auth_id".into(), AUTH_ID.into()));
    pairs.push(("timestamp".into(), unix_now_s().to_string()));
    let signed = sign::sign_params(&path, pairs, SignType::Md5, AUTH_KEY);
    client
        .post(format!("{base}{path}"))
        .form(&signed)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `POST /api/v2/app/upload` of a zip, signed, through `client`.
async fn upload(client: &reqwest::Client, base: &str, file_name: &str, zip: Vec<u8>) -> Value {
    let path = "/api/v2/app/upload";
    let pairs = vec![
        ("auth_id".to_string(), AUTH_ID.to_string()),
        ("timestamp".to_string(), unix_now_s().to_string()),
    ];
    let signed = sign::sign_params(path, pairs, SignType::HmacSha256, AUTH_KEY);
    let boundary = format!("elves{:016x}", rand::random::<u64>());
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: application/zip\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&zip);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    client
        .post(format!("{base}{path}"))
        .query(&signed)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The whole message chain of an error, for asserting on its cause.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn tls_broker(pki: &Pki) -> RabbitNode {
    RabbitNode::start_with_tls(
        free_port(),
        &NodeTls {
            port: free_port(),
            ca: pki.ca.clone(),
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            require_client_cert: true,
        },
    )
    .await
}

/// Declares a throwaway queue through a bus with `tls`: the outcome of a real connection.
async fn declare_over(url: &str, tls: &ClientTls) -> Result<(), String> {
    let namespace = format!("elves-tls-{:016x}", rand::random::<u64>());
    let bus = bus::open_with_tls(url, &namespace, tls).map_err(|err| err.to_string())?;
    let spec = QueueSpec {
        name: bus.queue_name("probe"),
        bindings: Vec::new(),
        durable: false,
    };
    let outcome = bus.declare(&spec).await.map_err(|err| err.to_string());
    bus.close().await;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_link_verifies_the_ca_and_presents_the_client_certificate() {
    let pki = Pki::new();
    let node = tls_broker(&pki).await;
    let url = node.tls_url();

    declare_over(&url, &pki.client_tls())
        .await
        .expect("the right CA and a client certificate connect");

    let wrong_ca = ClientTls {
        ca: Some(pki.other_ca.clone()),
        ..pki.client_tls()
    };
    let refused = declare_over(&url, &wrong_ca)
        .await
        .expect_err("a broker certificate from another CA is refused");
    assert!(
        refused.contains("not signed by a trusted CA") && refused.contains("UnknownIssuer"),
        "the error names the certificate problem: {refused}"
    );
    eprintln!("wrong CA: {refused}");

    let no_client_cert = ClientTls {
        ca: Some(pki.ca.clone()),
        cert: None,
        key: None,
    };
    let refused = declare_over(&url, &no_client_cert)
        .await
        .expect_err("the broker requires a client certificate");
    // Under TLS 1.3 the refusal arrives either as the broker's alert (read in time) or as a
    // connection closed after the handshake: both messages name the client certificate.
    assert!(
        refused.contains("check tls_cert and tls_key"),
        "the error points at the client certificate: {refused}"
    );
    eprintln!("no client certificate: {refused}");

    // What the handshake costs: a connection, a declaration and a close, plain and over TLS
    // with a client certificate, on the same node (printed, not asserted: 2 busy cores).
    let mut costs = Vec::new();
    for (link, link_url, tls) in [
        ("amqp", node.url(), ClientTls::default()),
        ("amqps", url.clone(), pki.client_tls()),
    ] {
        let mut took = Vec::new();
        for _ in 0..10 {
            let started = std::time::Instant::now();
            declare_over(&link_url, &tls).await.unwrap();
            took.push(started.elapsed());
        }
        took.sort();
        costs.push(format!("{link} {:?}", took[took.len() / 2]));
    }
    eprintln!(
        "connect + declare + close, median of 10: {}",
        costs.join(", ")
    );

    // A center whose broker link trusts another CA serves while it waits for the broker, over
    // HTTPS too, and says why it cannot connect.
    let database = elves_center::store::testing::TestDatabase::sqlite().unwrap();
    let data = tempfile::tempdir().unwrap();
    let namespace = format!("elves-tls-{:016x}", rand::random::<u64>());
    let mut config =
        crate::harness::center_config(data.path(), &BusKind::Rabbit, &namespace, &database.url);
    config.bus.url = url.clone();
    config.http.tls_cert = Some(pki.server_cert.clone());
    config.http.tls_key = Some(pki.server_key.clone());
    let center_bus = bus::open_with_tls(&url, &namespace, &wrong_ca).unwrap();
    let center = crate::harness::start_center(config, center_bus).await;
    let health: Value = pki
        .https_client()
        .get(format!("https://{}/healthz", center.http_addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "waiting for the broker", "{health}");
    let last_error = health["broker"]["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("not signed by a trusted CA"),
        "{health}"
    );
    center.stop();

    let plain = declare_over(&url.replacen("amqps://", "amqp://", 1), &pki.client_tls())
        .await
        .expect_err("TLS files with an amqp:// URL are refused, not ignored");
    assert!(plain.contains("not amqps://"), "{plain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn center_and_agent_work_over_amqps_and_https() {
    let pki = Pki::new();
    let node = tls_broker(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let namespace = format!("elves-tls-{:016x}", rand::random::<u64>());
    let signer = elves_shared::crypto::InstructionSigner::load_or_create(
        "center",
        &dir.path().join("center.key"),
    )
    .unwrap();
    let port = free_port();
    let base = format!("https://127.0.0.1:{port}");

    let bus_tls = format!(
        "tls_ca = {ca}\ntls_cert = {cert}\ntls_key = {key}\n",
        ca = toml_path(&pki.ca),
        cert = toml_path(&pki.client_cert),
        key = toml_path(&pki.client_key),
    );
    let center_toml = dir.path().join("center.toml");
    std::fs::write(
        &center_toml,
        format!(
            "data_dir = {data}\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\ntls_cert = {cert}\ntls_key = {key}\n\
             [bus]\nurl = {url:?}\nnamespace = {namespace:?}\n{bus_tls}\
             [auth]\nauth_id = {AUTH_ID:?}\nauth_key = {AUTH_KEY:?}\n\
             [keys]\nsigning_key = {signing_key}\n",
            data = toml_path(&dir.path().join("center-data")),
            cert = toml_path(&pki.server_cert),
            key = toml_path(&pki.server_key),
            url = node.tls_url(),
            signing_key = toml_path(&dir.path().join("center.key")),
        ),
    )
    .unwrap();
    let _center = spawn_elves(
        &["center", "--config", center_toml.to_str().unwrap()],
        dir.path(),
        "center.log",
    );

    let apps_dir = dir.path().join("apps");
    install_test_apps(&apps_dir);
    let agent_toml = dir.path().join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "id = \"tls-agent\"\napps_dir = {apps}\nspool_dir = {spool}\nheartbeat_interval_ms = 200\n\
             cron_file = {cron}\n\
             [bus]\nurl = {url:?}\nnamespace = {namespace:?}\n{bus_tls}\
             [center]\nkey_id = \"center\"\npublic_key = {public_key:?}\ntls_ca = {ca}\n",
            apps = toml_path(&apps_dir),
            spool = toml_path(&dir.path().join("spool")),
            cron = toml_path(&dir.path().join("cron.json")),
            url = node.tls_url(),
            public_key = signer.public_key_hex(),
            ca = toml_path(&pki.ca),
        ),
    )
    .unwrap();
    let _agent = spawn_elves(
        &["agent", "--config", agent_toml.to_str().unwrap()],
        dir.path(),
        "agent.log",
    );

    let https = pki.https_client();
    let logs = || {
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
        format!(
            "center:\n{}\nagent:\n{}",
            read("center.log"),
            read("agent.log")
        )
    };
    let online = async {
        wait_until(
            "the agent online at the https center",
            Duration::from_secs(60),
            || async {
                let Ok(response) = https.get(format!("{base}/healthz")).send().await else {
                    return false;
                };
                let Ok(health) = response.json::<Value>().await else {
                    return false;
                };
                health["heartbeat"]["online"].get("tls-agent").is_some()
            },
        )
        .await;
    };
    if tokio::time::timeout(Duration::from_secs(70), online)
        .await
        .is_err()
    {
        panic!("the agent did not come online\n{}", logs());
    }

    // An RT call: HTTPS in, the signed instruction over amqps to the agent, its result back.
    let answer = call(
        &https,
        &base,
        "rt/exec",
        &[
            ("ip", "tls-agent"),
            ("app", "apptest"),
            ("func", "helloword"),
            ("param", r#"{"my":"over tls"}"#),
        ],
    )
    .await;
    assert_eq!(answer["flag"], "true", "{answer}\n{}", logs());
    assert_eq!(answer["result"]["worker_message"], "over tls", "{answer}");
    // What a call costs through both TLS links (printed, not asserted: 2 busy cores).
    let mut took = Vec::new();
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let answer = call(
            &https,
            &base,
            "rt/exec",
            &[
                ("ip", "tls-agent"),
                ("app", "apptest"),
                ("func", "helloword"),
            ],
        )
        .await;
        assert_eq!(answer["flag"], "true", "{answer}");
        took.push(started.elapsed());
    }
    took.sort();
    eprintln!(
        "rt/exec over https + amqps, 20 calls: median {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );

    // A package: the center's download link is https://, and the agent fetches it trusting
    // `center.tls_ca`.
    let uploaded = upload(
        &https,
        &base,
        "tlsdemo_1.0.zip",
        elves_shared::package::testing::app_zip("fetched over https"),
    )
    .await;
    assert_eq!(uploaded["flag"], "true", "{uploaded}");
    wait_until(
        "the uploaded app runnable on the agent",
        Duration::from_secs(20),
        || async {
            let answer = call(
                &https,
                &base,
                "rt/exec",
                &[("ip", "tls-agent"), ("app", "tlsdemo"), ("func", "f")],
            )
            .await;
            answer["result"]["worker_message"] == "fetched over https"
        },
    )
    .await;
    let metrics = https
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let downloads: u64 = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(r#"elves_api_calls_total{endpoint="app/download",code="ok"} "#)
        })
        .map(|count| count.trim().parse().unwrap())
        .unwrap_or(0);
    assert!(
        downloads >= 1,
        "the package came from this center's https API:\n{metrics}"
    );

    // Plain HTTP to the TLS port gets no answer, and a client that does not trust the test
    // CA refuses the center's certificate.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(plain.is_err(), "plain http to the https port: {plain:?}");
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect_err("a client without the test CA refuses the certificate");
    let why = chain(&untrusting);
    assert!(why.contains("UnknownIssuer"), "{why}");
}
