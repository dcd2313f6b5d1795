//! Helpers shared by the kernel tests (`netns.rs`, `netlink.rs`): throwaway network namespaces
//! and a canonical form of `nft list table` output.
//!
//! Invariants: every namespace is removed by a Drop guard, even when the test fails; work inside
//! a namespace runs on a thread that entered it with setns(2), which is per thread.

// Each test binary uses its own share of these.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use nix::sched::{CloneFlags, setns};
use nodus_net::proxy::apply::Nft;
use nodus_net::proxy::conntrack::Conntrack;
use nodus_net::proxy::netlink::Netlink;

/// Why a test cannot run here, if it cannot: it needs root and these tools on PATH.
pub fn unsupported(tools: &[&str]) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root to create network namespaces".into());
    }
    for &tool in tools {
        let found = Command::new(tool)
            .arg(if tool == "ip" { "-V" } else { "--version" })
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("needs `{tool}` on PATH"));
        }
    }
    None
}

/// Returns from the test with a message when `unsupported(tools)` says why it cannot run.
macro_rules! require_kernel {
    ($tools:expr) => {
        if let Some(why) = common::unsupported($tools) {
            eprintln!("skipping {}: {why}", module_path!());
            return;
        }
    };
}

pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Netns {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("nodus-t{}-{n}-{role}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run(&full);
    }

    pub fn nft(&self) -> Nft {
        Nft::with_command("ip", ["netns", "exec", self.name.as_str(), "nft"])
    }

    pub fn conntrack(&self) -> Conntrack {
        Conntrack::with_command("ip", ["netns", "exec", self.name.as_str(), "conntrack"])
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("entering {path}: {e}"));
            f()
        })
    }

    pub fn exec<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("the namespace thread panicked")
    }

    /// A netlink socket in this namespace, opened by a thread that entered it.
    pub fn netlink(&self) -> Netlink {
        self.exec(|| Netlink::open().expect("opening the netlink socket"))
    }

    /// `nft --debug=netlink list table`: every rule's expressions, as the kernel holds them.
    pub fn expressions(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "--debug=netlink"])
            .args(["list", "table", "inet", "nodus"])
            .output()
            .expect("running nft --debug=netlink");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Best effort: a failure here must not hide the test's own failure.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `nft list table` with chains, sets and set elements in a canonical order: the kernel lists
/// objects in creation order and hash sets in any order, neither of which is behaviour.
pub fn canonical_listing(listing: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in listing.lines() {
        let trimmed = line.trim();
        if line.starts_with("\t") && !line.starts_with("\t\t") && trimmed.ends_with('{') {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(trimmed);
            block.push(' ');
            if line == "\t}" {
                blocks.push(canonical_elements(&current.take().expect("an open block")));
            }
        }
    }
    blocks.sort();
    blocks
}

fn canonical_elements(block: &str) -> String {
    let Some(start) = block.find("elements = {") else {
        return block.to_owned();
    };
    let body_start = start + "elements = {".len();
    let body_end = body_start + block[body_start..].find('}').expect("closed elements");
    let mut elements: Vec<&str> = block[body_start..body_end]
        .split(',')
        .map(str::trim)
        .collect();
    elements.sort();
    format!(
        "{}{}{}",
        &block[..body_start],
        elements.join(", "),
        &block[body_end..]
    )
}
