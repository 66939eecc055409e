//! `elves-center` as systemd runs it (Type=notify): READY=1 on $NOTIFY_SOCKET once it serves
//! HTTP, and a clean exit on SIGTERM, which `systemctl stop` sends.

#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

/// Generous for a loaded CI machine; the wait ends as soon as the message comes.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn elves_center_notifies_systemd_once_it_serves_http() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("center.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:{port}\"\n[bus]\nurl = \"inproc\"\n\
             [auth]\nauth_id = \"admin\"\nauth_key = \"readiness-test-key\"\n[cron]\ndir = {:?}\n",
            dir.path().join("data"),
            dir.path().join("cron.d"),
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_elves-center"));
    command
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path);
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("ELVES_")) {
        command.env_remove(name);
    }
    let mut center = command.spawn().unwrap();

    let message = await_notification(&socket, &mut center);
    assert!(message.lines().any(|line| line == "READY=1"), "{message:?}");

    // Ready means serving: /healthz answers at once.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");

    run_ok(
        Command::new("kill")
            .arg("-TERM")
            .arg(center.id().to_string()),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = center.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < START_TIMEOUT, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

fn run_ok(command: &mut Command) {
    assert!(command.status().unwrap().success(), "{command:?}");
}

/// The first message on `socket`, while `child` runs; fails at once if it exits first.
fn await_notification(socket: &UnixDatagram, child: &mut std::process::Child) -> String {
    let started = Instant::now();
    let mut message = [0u8; 512];
    loop {
        if let Ok(length) = socket.recv(&mut message) {
            return String::from_utf8_lossy(&message[..length]).into_owned();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("elves-center exited ({status}) without telling systemd it was ready");
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            panic!("no notification from elves-center within {START_TIMEOUT:?}");
        }
    }
}
