//! Apply: puts a [`Ruleset`] into the kernel as one atomic nftables transaction, and removes it.
//!
//! Invariants: every change is a single `nft -f -` run, which nft sends as one netlink batch, so the
//! kernel switches from the old table to the new one at once or not at all (a refused transaction
//! leaves the previous ruleset in place); only `table inet nodus` is ever named.
//!
//! Why nft text at all: it is nft's reference form (golden files, `nft list` agree with it), and
//! the proxy falls back to it when the netlink encoder (`netlink`) declines or fails a
//! transaction; the `nftables` crate drives `nft -j`, which cannot express verdict maps (nor parse
//! `masquerade fully-random`). Measured with `proxy_benchmark` in `net/tests/netns.rs` (2-core VM,
//! kernel 6.18, nft 1.0.6, 10k services × 2 endpoints, from no table): a full replace as nft text
//! 0.74 s, the same batch from `netlink` 0.25 s: the difference is nft parsing the text. (With one
//! anonymous set per service the 10k commit took ~50 s of kernel time; see
//! `ruleset::NUMGEN_CASCADE_MAX`.) nft 1.0.6 also dumps every chain of the table into its cache
//! before an `add rule` or `delete chain`, about 140 ms at 10k services however small the change.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::ruleset::{FAMILY, Ruleset, TABLE};

/// The `nft` command, optionally behind a prefix such as `ip netns exec NAME`.
#[derive(Debug, Clone)]
pub struct Nft {
    program: PathBuf,
    leading_args: Vec<OsString>,
}

/// What one apply did, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Wall time from spawning nft to its exit.
    pub duration: Duration,
    /// Size of the transaction text.
    pub bytes: usize,
}

/// An error talking to nft, naming the table it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("starting {program} for table {FAMILY} {TABLE}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for {program} for table {FAMILY} {TABLE}")]
    Wait {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// nft ran and refused the transaction; nothing was changed.
    #[error("nft refused the transaction for table {FAMILY} {TABLE} ({status}): {stderr}")]
    Rejected { status: ExitStatus, stderr: String },
}

impl Default for Nft {
    fn default() -> Self {
        Nft::new()
    }
}

impl Nft {
    /// `nft` from `PATH`, in the caller's network namespace.
    pub fn new() -> Self {
        Nft {
            program: PathBuf::from("nft"),
            leading_args: Vec::new(),
        }
    }

    /// Runs `program leading_args... -f -` instead, e.g. `ip netns exec NAME nft` for tests.
    pub fn with_command(
        program: impl Into<PathBuf>,
        leading_args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        Nft {
            program: program.into(),
            leading_args: leading_args.into_iter().map(Into::into).collect(),
        }
    }

    /// Replaces nodus's table with `ruleset`, atomically.
    pub fn apply(&self, ruleset: &Ruleset) -> Result<Applied, Error> {
        let text = ruleset.render();
        let duration = self.run(&text)?;
        Ok(Applied {
            duration,
            bytes: text.len(),
        })
    }

    /// Removes nodus's table if it exists (`--cleanup`). Idempotent.
    pub fn cleanup(&self) -> Result<(), Error> {
        self.run(&format!(
            "add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
        ))
        .map(|_| ())
    }

    /// The table as the kernel has it (`nft list table`), for diagnostics and tests.
    pub fn list(&self) -> Result<String, Error> {
        let output = self
            .command()
            .args(["list", "table", FAMILY, TABLE])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| self.spawn_error(source))?;
        if !output.status.success() {
            return Err(Error::Rejected {
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs one transaction script through `nft -f -`.
    pub fn run(&self, script: &str) -> Result<Duration, Error> {
        let start = Instant::now();
        let mut child = self
            .command()
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error(source))?;
        // nft reads the whole script before it prints anything, so writing first cannot deadlock.
        // A write error means nft exited early; its stderr says why, so report that instead.
        let written = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(script.as_bytes()));
        let output = child.wait_with_output().map_err(|source| Error::Wait {
            program: self.program.clone(),
            source,
        })?;
        if !output.status.success() {
            return Err(Error::Rejected {
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        if let Some(Err(source)) = written {
            return Err(Error::Wait {
                program: self.program.clone(),
                source,
            });
        }
        Ok(start.elapsed())
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.leading_args);
        cmd
    }

    fn spawn_error(&self, source: std::io::Error) -> Error {
        Error::Spawn {
            program: self.program.clone(),
            source,
        }
    }
}
