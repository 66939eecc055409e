//! `elves-agent` as systemd runs it (Type=notify): READY=1 on $NOTIFY_SOCKET once its
//! configuration, key, spool and journal are in order, and a clean exit on SIGTERM, which
//! `systemctl stop` sends.

#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

/// Generous for a loaded CI machine; the wait ends as soon as the message comes.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn elves_agent_notifies_systemd_once_it_is_set_up() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let center_key = elves_shared::crypto::InstructionSigner::generate("center");
    let spool = dir.path().join("spool");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "id = \"readiness\"\napps_dir = {:?}\nspool_dir = {spool:?}\ncron_file = {:?}\n\
             [bus]\nurl = \"inproc\"\n[center]\npublic_key = \"{}\"\n",
            dir.path().join("apps"),
            dir.path().join("cron.json"),
            center_key.public_key_hex(),
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_elves-agent"));
    command
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path);
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("ELVES_")) {
        command.env_remove(name);
    }
    let mut agent = command.spawn().unwrap();

    let message = await_notification(&socket, &mut agent);
    assert!(message.lines().any(|line| line == "READY=1"), "{message:?}");
    assert!(spool.is_dir(), "ready before its spool exists");

    assert!(Command::new("kill")
        .arg("-TERM")
        .arg(agent.id().to_string())
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < START_TIMEOUT, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
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
            panic!("elves-agent exited ({status}) without telling systemd it was ready");
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            panic!("no notification from elves-agent within {START_TIMEOUT:?}");
        }
    }
}
