//! The agent's behaviour on bad input, run as a user would run the binary: one clear
//! error line for mistakes, retries with clear logs for what may heal, never a panic.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const NODUS: &str = env!("CARGO_BIN_EXE_nodus");

fn run(args: &[&str]) -> Output {
    Command::new(NODUS).args(args).output().expect("nodus runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_missing_kubeconfig_is_one_clear_error() {
    let output = run(&[
        "--kubeconfig",
        "/nonexistent/kubelet.conf",
        "--node-ip",
        "192.0.2.10",
    ]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("nodus: error: reading kubeconfig /nonexistent/kubelet.conf"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_garbled_kubeconfig_is_one_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, "clusters: [this is not: a kubeconfig").expect("write");
    let output = run(&[
        "--kubeconfig",
        path.to_str().expect("utf-8"),
        "--node-ip",
        "192.0.2.10",
    ]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    let error_lines: Vec<_> = err
        .lines()
        .filter(|l| l.starts_with("nodus: error:"))
        .collect();
    assert_eq!(error_lines.len(), 1, "{err}");
    assert!(
        error_lines[0].contains("reading kubeconfig")
            && error_lines[0].contains("line 1 column 11"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn malformed_flags_are_refused_before_anything_starts() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--max-pods", "many"],
            "invalid value 'many' for '--max-pods <N>'",
        ),
        (
            &["--node-ip", "10.0.0.300"],
            "invalid --node-ip \"10.0.0.300\"",
        ),
        (
            &["--node-labels", "node-role.kubernetes.io/master="],
            "invalid --node-labels",
        ),
        (
            &["--register-with-taints", "gpu=yes:Always"],
            "effect must be one of NoSchedule",
        ),
        (
            &["--container-runtime-endpoint", "tcp://127.0.0.1:1"],
            "expected unix:///path/to/socket",
        ),
        (&["--no-such-flag"], "unexpected argument '--no-such-flag'"),
    ];
    for (args, expected) in cases {
        let mut all = vec!["--kubeconfig", "/nonexistent"];
        all.extend_from_slice(args);
        let output = run(&all);
        let err = stderr(&output);
        assert!(!output.status.success(), "{args:?} must fail");
        assert!(
            err.contains(expected),
            "{args:?}: expected {expected:?} in {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn help_documents_the_kubelet_flags() {
    let output = run(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--kubeconfig",
        "--hostname-override",
        "--node-ip",
        "--container-runtime-endpoint",
        "--node-labels",
        "--register-with-taints",
        "--max-pods",
        "--root-dir",
        "--pod-cidr",
        "--v <LEVEL>",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

/// Reads a child's stderr on a thread, so the test can wait for a line with a deadline.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for_line(
    lines: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    needle: &str,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    while !seen.iter().any(|l| l.contains(needle)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!(
                "no log line with {needle:?} within {timeout:?}; got:\n{}",
                seen.join("\n")
            ),
        }
    }
}

#[test]
fn an_unreachable_api_server_and_runtime_are_retried_and_sigterm_still_stops_promptly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    // Port 1 on loopback: nothing listens, so every connection is refused at once.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\n\
         users:\n- name: u\n  user:\n    token: not-a-real-token\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
    )
    .expect("write kubeconfig");
    let root = dir.path().join("root");
    let mut child = Command::new(NODUS)
        .args(["--kubeconfig", kubeconfig.to_str().expect("utf-8")])
        .args([
            "--container-runtime-endpoint",
            "unix:///nonexistent/containerd.sock",
        ])
        .args(["--root-dir", root.to_str().expect("utf-8")])
        .args(["--node-ip", "192.0.2.10", "--hostname-override", "cli-test"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nodus starts");
    let lines = stderr_lines(&mut child);
    let mut seen = Vec::new();
    wait_for_line(
        &lines,
        &mut seen,
        "container runtime is down",
        Duration::from_secs(20),
    );
    wait_for_line(
        &lines,
        &mut seen,
        "registering the node failed",
        Duration::from_secs(20),
    );
    wait_for_line(&lines, &mut seen, "retry_in=", Duration::from_secs(20));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "transient failures must not end the agent"
    );

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "nodus did not exit within 5 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    seen.extend(lines.try_iter());
    assert!(
        !seen.iter().any(|l| l.contains("panicked")),
        "{}",
        seen.join("\n")
    );
}
