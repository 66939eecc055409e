//! The Debian packages of `scripts/package`, built from the debug binaries `cargo test` already
//! made (no release build), installed with dpkg into a scratch root: `dpkg --root` with its own
//! database, the maintainer scripts run outside a chroot with `DPKG_ROOT` set (this machine
//! has no systemd running, so the units are checked with `systemd-analyze verify` and
//! `security --offline` against that root instead of being started). Needs root, dpkg-deb,
//! dpkg-shlibdeps and systemd-analyze, as CI has.

use crate::harness::repo_root;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `cargo test` put the binaries: elves for this test, elves-center and elves-agent for
/// their crates' own tests (`cargo test --workspace` builds all three).
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_elves"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{command:?} failed:\n{stdout}\n{stderr}"
    );
    format!("{stdout}{stderr}")
}

/// The three packages, by name.
fn build_packages(out: &Path) -> BTreeMap<String, PathBuf> {
    for binary in ["elves-center", "elves-agent"] {
        assert!(
            bin_dir().join(binary).exists(),
            "{binary} is not built next to elves: run `cargo build -p elves-center -p elves-agent` \
             (cargo test --workspace builds it)"
        );
    }
    let printed = run(Command::new(repo_root().join("scripts/package"))
        .arg("--debug")
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--out")
        .arg(out));
    let packages: BTreeMap<String, PathBuf> = printed
        .lines()
        .filter(|line| line.ends_with(".deb"))
        .map(|line| {
            let path = PathBuf::from(line);
            let name = path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .split('_')
                .next()
                .unwrap()
                .to_string();
            (name, path)
        })
        .collect();
    assert_eq!(
        packages.keys().collect::<Vec<_>>(),
        ["elves", "elves-agent", "elves-center"],
        "{printed}"
    );
    packages
}

/// A root directory with just what dpkg and the maintainer scripts need: a user database and
/// an empty package database; and the base system's unit files for systemd-analyze.
struct ScratchRoot {
    dir: tempfile::TempDir,
}

impl ScratchRoot {
    fn new() -> ScratchRoot {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in [
            "etc",
            "var/lib/dpkg/info",
            "var/lib/dpkg/updates",
            "var/lib/dpkg/triggers",
        ] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        for (file, line) in [
            ("passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            ("group", "root:x:0:\n"),
            ("shadow", "root:*:19000:0:99999:7:::\n"),
            ("gshadow", "root:*::\n"),
        ] {
            std::fs::write(root.join("etc").join(file), line).unwrap();
        }
        std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
        ScratchRoot { dir }
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.dir.path().join(inside.trim_start_matches('/'))
    }

    fn dpkg(&self, args: &[&str]) -> String {
        // Dependencies (libc6, libpq5, passwd) are this host's, not the scratch root's.
        run(Command::new("dpkg")
            .arg(format!("--root={}", self.dir.path().display()))
            .args(["--force-script-chrootless", "--force-depends"])
            .args(args))
    }

    fn install(&self, packages: &[&Path]) -> String {
        let mut args = vec!["--force-confold", "-i"];
        args.extend(packages.iter().map(|path| path.to_str().unwrap()));
        self.dpkg(&args)
    }

    /// `name`'s entry in the root's passwd (or group) file, split at the colons.
    fn entry(&self, file: &str, name: &str) -> Option<Vec<String>> {
        std::fs::read_to_string(self.path(&format!("etc/{file}")))
            .unwrap()
            .lines()
            .map(|line| line.split(':').map(str::to_string).collect::<Vec<_>>())
            .find(|fields| fields[0] == name)
    }

    fn id_of(&self, file: &str, name: &str) -> u32 {
        let entry = self
            .entry(file, name)
            .unwrap_or_else(|| panic!("no {name} in {file}"));
        entry[2].parse().unwrap()
    }

    /// The `Conffiles:` lines of a package in the root's dpkg status file.
    fn conffiles(&self, package: &str) -> Vec<String> {
        let status = std::fs::read_to_string(self.path("var/lib/dpkg/status")).unwrap();
        let stanza = status
            .split("\n\n")
            .find(|stanza| {
                stanza
                    .lines()
                    .any(|line| line == format!("Package: {package}"))
            })
            .unwrap_or_else(|| panic!("{package} not in the status file:\n{status}"));
        stanza
            .lines()
            .skip_while(|line| *line != "Conffiles:")
            .skip(1)
            .take_while(|line| line.starts_with(' '))
            .map(|line| line.split_whitespace().next().unwrap().to_string())
            .collect()
    }

    /// The base system's unit files and /bin/kill (the center's ExecReload), which a real host
    /// has and systemd-analyze looks for.
    fn add_base_system(&self) {
        std::fs::create_dir_all(self.path("usr/lib/systemd")).unwrap();
        run(Command::new("cp")
            .arg("-a")
            .arg("/usr/lib/systemd/system")
            .arg(self.path("usr/lib/systemd/")));
        run(Command::new("install")
            .arg("-D")
            .arg("/bin/kill")
            .arg(self.path("bin/kill")));
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn unit_lines(unit: &str) -> Vec<String> {
    unit.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn packages_install_into_a_scratch_root_with_users_units_and_conffiles() {
    let out = tempfile::tempdir().unwrap();
    let packages = build_packages(out.path());
    let root = ScratchRoot::new();
    let all: Vec<&Path> = packages.values().map(PathBuf::as_path).collect();
    root.install(&all);

    // Binaries, units, configurations.
    for binary in ["elves", "elves-center", "elves-agent"] {
        let path = root.path(&format!("usr/bin/{binary}"));
        assert_eq!(mode(&path), 0o755, "{binary}");
        let version = run(Command::new(&path).arg("--version"));
        assert!(version.contains("0.1.0"), "{binary}: {version}");
    }
    for (role, data_subdirs) in [("center", &[][..]), ("agent", &["apps", "spool"][..])] {
        let user = format!("elves-{role}");
        // The service's own system user, no login, home in its data directory.
        let passwd = root.entry("passwd", &user).expect("user created");
        let uid: u32 = passwd[2].parse().unwrap();
        assert!(uid < 1000, "{user} is not a system user: {passwd:?}");
        assert_eq!(passwd[5], format!("/var/lib/elves/{role}"));
        assert_eq!(passwd[6], "/usr/sbin/nologin");
        let gid = root.id_of("group", &user);

        let data = root.path(&format!("var/lib/elves/{role}"));
        let metadata = std::fs::metadata(&data).unwrap();
        assert_eq!((metadata.uid(), metadata.gid()), (uid, gid), "{role} data");
        assert_eq!(mode(&data), 0o750);
        for sub in data_subdirs {
            assert_eq!(std::fs::metadata(data.join(sub)).unwrap().uid(), uid);
        }

        // The configuration holds broker credentials: readable by root and the service only.
        let config = root.path(&format!("etc/elves/{role}.toml"));
        let metadata = std::fs::metadata(&config).unwrap();
        assert_eq!((metadata.uid(), metadata.gid()), (0, gid), "{role} config");
        assert_eq!(mode(&config), 0o640);
        assert_eq!(
            root.conffiles(&user),
            [format!("/etc/elves/{role}.toml")],
            "{role} conffiles"
        );

        let unit =
            std::fs::read_to_string(root.path(&format!("lib/systemd/system/{user}.service")))
                .unwrap();
        let lines = unit_lines(&unit);
        for expected in [
            "Type=notify".to_string(),
            format!("User={user}"),
            format!("ExecStart=/usr/bin/{user} --config /etc/elves/{role}.toml"),
            "Restart=on-failure".to_string(),
            format!("StateDirectory=elves/{role}"),
        ] {
            assert!(lines.contains(&expected), "{user}: no {expected}");
        }
        // Logs go to the journal: nothing sends them elsewhere.
        assert!(!unit.contains("StandardOutput=") && !unit.contains("StandardError="));
    }

    // The packaged configurations load with the services' own loaders and point at the
    // packaged places.
    let center =
        elves_center::config::CenterConfig::load(Some(&root.path("etc/elves/center.toml")))
            .unwrap();
    assert_eq!(center.data_dir, Path::new("/var/lib/elves/center"));
    assert_eq!(center.cron.dir, Path::new("/etc/elves/cron.d"));
    assert!(root.path("etc/elves/cron.d").is_dir());
    // The one key an operator must add (step 4 of the README's Deploying).
    let center_key = elves_shared::crypto::InstructionSigner::generate("center");
    let agent = elves_agent::AgentConfig::load(
        Some(&root.path("etc/elves/agent.toml")),
        [(
            "ELVES_CENTER__PUBLIC_KEY".to_string(),
            center_key.public_key_hex(),
        )],
    )
    .unwrap();
    assert_eq!(agent.apps_dir, Path::new("/var/lib/elves/agent/apps"));
    assert_eq!(agent.spool_dir, Path::new("/var/lib/elves/agent/spool"));

    // The center gets the strict set; the agent's apps keep sudo and a writable system (see
    // the comment in its unit).
    let center_unit = unit_lines(
        &std::fs::read_to_string(root.path("lib/systemd/system/elves-center.service")).unwrap(),
    );
    for expected in [
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/elves/center",
        "NoNewPrivileges=yes",
    ] {
        assert!(
            center_unit.iter().any(|line| line == expected),
            "center: {expected}"
        );
    }
    let agent_unit = unit_lines(
        &std::fs::read_to_string(root.path("lib/systemd/system/elves-agent.service")).unwrap(),
    );
    assert!(agent_unit
        .iter()
        .all(|line| !line.starts_with("NoNewPrivileges=") && !line.starts_with("ProtectSystem=")));

    // Completions and man pages, generated from the command's definitions.
    let bash =
        std::fs::read_to_string(root.path("usr/share/bash-completion/completions/elves")).unwrap();
    assert!(
        bash.contains("_elves()") && bash.contains("doctor"),
        "bash completion"
    );
    let zsh =
        std::fs::read_to_string(root.path("usr/share/zsh/vendor-completions/_elves")).unwrap();
    assert!(zsh.starts_with("#compdef elves"), "zsh completion");
    let fish = std::fs::read_to_string(root.path("usr/share/fish/vendor_completions.d/elves.fish"))
        .unwrap();
    assert!(fish.contains("complete -c elves"), "fish completion");
    for page in ["elves.1.gz", "elves-doctor.1.gz", "elves-queue-run.1.gz"] {
        let text = run(Command::new("gzip")
            .arg("-dc")
            .arg(root.path(&format!("usr/share/man/man1/{page}"))));
        assert!(text.contains(".TH elves"), "{page}: {text}");
    }

    // The units, as systemd reads them on a host: no warning at all (systemd-analyze exits 0
    // even for an unknown key, so its output must be empty).
    root.add_base_system();
    let verify = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .arg(format!("--root={}", root.dir.path().display()))
        .arg("/lib/systemd/system/elves-center.service")
        .arg("/lib/systemd/system/elves-agent.service"));
    assert_eq!(verify.trim(), "", "systemd-analyze verify");
    let security = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(format!("--root={}", root.dir.path().display()))
        .arg("elves-center.service"));
    let exposure: f64 = security
        .lines()
        .find_map(|line| line.split("elves-center.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{security}"));
    println!("elves-center.service exposure level: {exposure}");
    assert!(exposure <= 2.0, "center exposure {exposure}:\n{security}");

    // An operator's edit of a conffile survives a reinstall, and so do its mode and owner.
    let center_config = root.path("etc/elves/center.toml");
    let edited = std::fs::read_to_string(&center_config)
        .unwrap()
        .replace("change-me-please", "an-operator-secret");
    std::fs::write(&center_config, &edited).unwrap();
    std::fs::set_permissions(&center_config, std::fs::Permissions::from_mode(0o600)).unwrap();
    root.install(&[&packages["elves-center"]]);
    assert_eq!(std::fs::read_to_string(&center_config).unwrap(), edited);
    assert_eq!(mode(&center_config), 0o600);

    // Removing keeps the configuration; purging deletes it, and keeps the data and the user.
    root.dpkg(&["--remove", "elves-center"]);
    assert!(!root.path("usr/bin/elves-center").exists());
    assert!(!root
        .path("lib/systemd/system/elves-center.service")
        .exists());
    assert!(center_config.exists());
    root.dpkg(&["--purge", "elves-center"]);
    assert!(!center_config.exists());
    assert!(root.path("var/lib/elves/center").is_dir());
    assert!(root.entry("passwd", "elves-center").is_some());
    // The agent is untouched by all that.
    assert!(root.path("etc/elves/agent.toml").exists());
}

#[test]
fn completions_and_man_pages_generate_for_every_shell() {
    let elves = env!("CARGO_BIN_EXE_elves");
    for (shell, marker) in [
        ("bash", "complete -F _elves"),
        ("zsh", "#compdef elves"),
        ("fish", "complete -c elves"),
        ("elvish", "edit:completion:arg-completer[elves]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let script = run(Command::new(elves).args(["completions", shell]));
        assert!(script.contains(marker), "{shell}: no {marker}");
        assert!(script.contains("doctor"), "{shell}: no doctor subcommand");
    }
    let refused = Command::new(elves)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!refused.status.success());

    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    run(Command::new(elves).arg("man").arg("--out-dir").arg(&pages));
    let page = std::fs::read_to_string(pages.join("elves-doctor.1")).unwrap();
    assert!(page.contains(".TH elves-doctor 1"), "{page}");
    assert!(page.contains("max\\-clock\\-skew\\-s"), "{page}");
    // One page per subcommand, nested ones included.
    for name in [
        "elves.1",
        "elves-completions.1",
        "elves-man.1",
        "elves-app-push.1",
    ] {
        assert!(pages.join(name).is_file(), "{name}");
    }
}
