//! systemd/: `install.sh` lays the files out where a systemd host expects them, the command
//! lines the units build (with kubeadm's own variables for the kubelet drop-in) are ones nodus
//! accepts, and `systemd-analyze verify` finds nothing to say about the units (when the tool
//! is there; this machine has it but does not boot with systemd).

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use nodus::config::Flags;

const NODUS: &str = env!("CARGO_BIN_EXE_nodus");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn install(root: &Path, extra: &[&str]) {
    let output = Command::new(repo().join("systemd/install.sh"))
        .args(["--binary", NODUS, "--root"])
        .arg(root)
        .arg("--no-reload")
        .args(extra)
        .output()
        .expect("install.sh runs");
    assert!(
        output.status.success(),
        "install.sh: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `Environment="K=V"` lines and the last non-empty `ExecStart=` of a unit or drop-in.
fn unit(text: &str) -> (HashMap<String, String>, String) {
    let mut env = HashMap::new();
    let mut exec = String::new();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Environment=") {
            let v = v.trim_matches('"');
            if let Some((k, v)) = v.split_once('=') {
                env.insert(k.to_owned(), v.to_owned());
            }
        } else if let Some(v) = line.strip_prefix("ExecStart=")
            && !v.is_empty()
        {
            exec = v.to_owned();
        }
    }
    (env, exec)
}

/// `K="V"` lines of an environment file.
fn env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

/// The argument vector systemd makes of `exec`: `$VAR` expands to the variable's words.
fn argv(exec: &str, env: &HashMap<String, String>) -> Vec<String> {
    exec.split_whitespace()
        .flat_map(|word| match word.strip_prefix('$') {
            Some(name) => env
                .get(name)
                .unwrap_or_else(|| panic!("${name} is not set"))
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            None => vec![word.to_owned()],
        })
        .collect()
}

#[test]
fn install_lays_out_the_binary_and_units() {
    let root = tempfile::tempdir().expect("a directory");
    install(root.path(), &["--replace-kubelet"]);
    let at = |p: &str| root.path().join(p.trim_start_matches('/'));
    assert_eq!(mode(&at("/usr/local/bin/nodus")), 0o755);
    for file in [
        "/etc/systemd/system/nodus.service",
        "/etc/systemd/system/kubelet.service.d/20-nodus.conf",
        "/etc/default/nodus",
        // This root has no containerd unit of its own.
        "/etc/systemd/system/containerd.service",
    ] {
        assert_eq!(mode(&at(file)), 0o644, "{file}");
    }
    // Installing again keeps the operator's settings, and a system containerd unit is left alone.
    std::fs::write(at("/etc/default/nodus"), "NODUS_ARGS=\"--max-pods=50\"\n").expect("edit");
    std::fs::remove_file(at("/etc/systemd/system/containerd.service")).expect("remove");
    std::fs::create_dir_all(at("/lib/systemd/system")).expect("mkdir");
    std::fs::write(at("/lib/systemd/system/containerd.service"), "[Unit]\n").expect("write");
    install(root.path(), &[]);
    assert_eq!(
        std::fs::read_to_string(at("/etc/default/nodus")).expect("read"),
        "NODUS_ARGS=\"--max-pods=50\"\n"
    );
    assert!(!at("/etc/systemd/system/containerd.service").exists());
}

#[test]
fn the_units_command_lines_are_accepted_by_nodus() {
    // nodus.service, with its default environment file.
    let text = std::fs::read_to_string(repo().join("systemd/nodus.service")).expect("unit");
    let (mut env, exec) = unit(&text);
    let defaults = std::fs::read_to_string(repo().join("systemd/nodus.default")).expect("file");
    env.extend(env_file(&defaults));
    let args = argv(&exec, &env);
    assert_eq!(args[0], "/usr/local/bin/nodus");
    let flags = Flags::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert_eq!(flags.kubeconfig, Path::new("/etc/kubernetes/kubelet.conf"));
    assert_eq!(
        flags.config.as_deref(),
        Some(Path::new("/var/lib/kubelet/config.yaml"))
    );

    // The kubelet drop-in, with the variables kubeadm's 10-kubeadm.conf and kubeadm-flags.env
    // set for the kubelet.
    let text = std::fs::read_to_string(repo().join("systemd/kubelet.service.d/20-nodus.conf"))
        .expect("drop-in");
    let (_, exec) = unit(&text);
    let kubeadm: HashMap<String, String> = [
        (
            "KUBELET_KUBECONFIG_ARGS",
            "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf",
        ),
        ("KUBELET_CONFIG_ARGS", "--config=/var/lib/kubelet/config.yaml"),
        (
            "KUBELET_KUBEADM_ARGS",
            "--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock --pod-infra-container-image=registry.k8s.io/pause:3.10",
        ),
        ("KUBELET_EXTRA_ARGS", "--node-ip=192.0.2.10 --max-pods=20"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let args = argv(&exec, &kubeadm);
    let flags = Flags::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert_eq!(
        flags.bootstrap_kubeconfig.as_deref(),
        Some(Path::new("/etc/kubernetes/bootstrap-kubelet.conf"))
    );
    assert_eq!(
        flags.container_runtime_endpoint,
        "unix:///var/run/containerd/containerd.sock"
    );
    assert_eq!(flags.max_pods, 20);
}

#[test]
fn systemd_analyze_verify_finds_nothing() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: no systemd-analyze on this machine");
        return;
    };
    assert!(version.status.success());
    let root = tempfile::tempdir().expect("a directory");
    install(root.path(), &["--replace-kubelet"]);
    // The units name /usr/local/bin/nodus, which verify checks is executable: point them at
    // the installed copy, in a unit directory of their own beside a stand-in kubelet.service.
    let units = tempfile::tempdir().expect("a directory");
    let installed = root.path().join("usr/local/bin/nodus");
    let rewrite = |from: &str, to: &Path| {
        let text = std::fs::read_to_string(root.path().join(from)).expect("read");
        let text = text.replace("/usr/local/bin/nodus", &installed.to_string_lossy());
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("mkdir");
        std::fs::write(to, text).expect("write");
    };
    rewrite(
        "etc/systemd/system/nodus.service",
        &units.path().join("nodus.service"),
    );
    rewrite(
        "etc/systemd/system/kubelet.service.d/20-nodus.conf",
        &units.path().join("kubelet.service.d/20-nodus.conf"),
    );
    std::fs::write(
        units.path().join("kubelet.service"),
        "[Unit]\nDescription=kubelet\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
    )
    .expect("write");
    for name in ["nodus.service", "kubelet.service"] {
        // A trailing ':' keeps the system's own unit directories (for the targets named).
        let output = Command::new("systemd-analyze")
            .args(["verify", name])
            .env("SYSTEMD_UNIT_PATH", format!("{}:", units.path().display()))
            .output()
            .expect("systemd-analyze runs");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && said.trim().is_empty(),
            "{name}: {said}"
        );
    }
}
