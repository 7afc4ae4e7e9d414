//! Child processes of a scenario: CPU pinning with `taskset`, free-port discovery, readiness
//! waits, liveness checks that quote the child's log when it dies, and companions (a helper
//! process such as Varnish's `varnishncsa` whose CPU and RSS count as its server's).

use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::procfs::{self, CpuTimes, Pid};

/// Whether to pin systems under test and the generator to separate CPUs.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinMode {
    /// Pin when `taskset` exists and at least two CPUs are allowed.
    Auto,
    /// Never pin.
    Off,
}

/// The CPU layout of a scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pinning {
    /// `taskset` binary, when pinning.
    #[serde(skip)]
    pub taskset: Option<PathBuf>,
    /// `taskset -c` list for every system under test (origin, proxy, ...).
    pub sut_cpus: Option<String>,
    /// `taskset -c` list for the load generator.
    pub generator_cpus: Option<String>,
    /// One sentence for the report saying what was done.
    pub description: String,
}

impl Pinning {
    /// Plans the layout: the generator gets the last allowed CPU, the systems under test the
    /// others, so the generator never competes with what it measures.
    pub fn plan(mode: PinMode, allowed: &[usize], taskset: Option<PathBuf>) -> Self {
        let unpinned = |why: &str| Pinning {
            taskset: None,
            sut_cpus: None,
            generator_cpus: None,
            description: format!(
                "not pinned ({why}); systems under test and generator share all CPUs"
            ),
        };
        match (mode, taskset) {
            (PinMode::Off, _) => unpinned("--pin off"),
            (PinMode::Auto, None) => unpinned("taskset not found"),
            (PinMode::Auto, Some(_)) if allowed.len() < 2 => unpinned("fewer than 2 CPUs allowed"),
            (PinMode::Auto, Some(taskset)) => {
                let (sut, generator) = allowed.split_at(allowed.len() - 1);
                let sut = procfs::format_cpu_list(sut);
                let generator = procfs::format_cpu_list(generator);
                Pinning {
                    taskset: Some(taskset),
                    description: format!(
                        "pinned with taskset: systems under test on CPU {sut}, load generator on CPU {generator}"
                    ),
                    sut_cpus: Some(sut),
                    generator_cpus: Some(generator),
                }
            }
        }
    }

    /// A command for `program`, prefixed with `taskset -c CPUS` when pinning.
    pub fn command(&self, program: &Path, cpus: Option<&str>) -> Command {
        match (&self.taskset, cpus) {
            (Some(taskset), Some(cpus)) => {
                let mut command = Command::new(taskset);
                command.arg("-c").arg(cpus).arg(program);
                command
            }
            _ => Command::new(program),
        }
    }

    /// How many CPUs the systems under test get (all allowed ones when unpinned).
    pub fn sut_cpu_count(&self, allowed: &[usize]) -> usize {
        self.sut_cpus
            .as_deref()
            .and_then(procfs::parse_cpu_list)
            .map_or(allowed.len(), |c| c.len())
            .max(1)
    }
}

/// Looks for an executable `taskset` on `PATH`.
pub fn find_taskset() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("taskset"))
        .find(|candidate| candidate.is_file())
}

/// `n` distinct loopback ports that were free a moment ago, for a child whose CLI cannot
/// report the port it bound: bind `127.0.0.1:0` n times (all held at once so they differ),
/// read the ports, close. Another process may take one before the child binds it; the
/// readiness wait then fails clearly.
pub fn free_loopback_ports(n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?)).collect()
}

/// Which processes a child's CPU time and peak RSS are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accounting {
    /// The child process alone (cathedral, the origin, `wasmtime serve`: one process each).
    Process,
    /// The child and every descendant, summed (nginx: a master and its workers; Varnish: its
    /// manager and its cache process).
    Tree,
}

/// A running child of the scenario in its own process group; the whole group is killed when
/// the child is dropped or stopped, so a server's worker processes never outlive the harness
/// run (nginx workers do not exit with their master).
#[derive(Debug)]
pub struct ManagedChild {
    pub name: String,
    child: Child,
    pid: u32,
    log: Option<PathBuf>,
    accounting: Accounting,
    /// Helpers started for this child (each in its own process group) whose CPU time and peak
    /// RSS are added to the child's, which are checked with it and stopped before it.
    companions: Vec<ManagedChild>,
    /// Set by [`ManagedChild::stop`], so dropping afterwards signals nothing.
    stopped: bool,
}

impl ManagedChild {
    /// Spawns `command` in a new process group; `log` is where its output goes, for error
    /// messages.
    pub fn spawn(name: &str, command: Command, log: Option<PathBuf>) -> anyhow::Result<Self> {
        Self::spawn_with(name, command, log, Accounting::Process)
    }

    /// [`ManagedChild::spawn`] with CPU and RSS read per `accounting`.
    pub fn spawn_with(
        name: &str,
        mut command: Command,
        log: Option<PathBuf>,
        accounting: Accounting,
    ) -> anyhow::Result<Self> {
        command.kill_on_drop(true).process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        let pid = child
            .id()
            .with_context(|| format!("{name} exited at once"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            pid,
            log,
            accounting,
            companions: Vec::new(),
            stopped: false,
        })
    }

    /// Attaches `companion`: from now on its CPU time and peak RSS count as this child's, it
    /// must stay alive as long as this child does, and it is stopped first.
    pub fn add_companion(&mut self, companion: ManagedChild) {
        self.companions.push(companion);
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The child's piped stdout, if it was piped and not yet taken.
    pub fn take_stdout(&mut self) -> Option<tokio::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Fails, quoting the end of the child's log, if the child or one of its companions has
    /// exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for companion in &mut self.companions {
            companion
                .check_alive()
                .with_context(|| format!("a companion of {} stopped", self.name))?;
        }
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!(
                "{} (pid {}) exited with {status}{}",
                self.name,
                self.pid,
                self.log_tail()
            ),
        }
    }

    /// "; last lines of LOG:\n..." or nothing when there is no log.
    fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        match tail(path, 4096) {
            Ok(text) if !text.trim().is_empty() => {
                format!("; end of {}:\n{}", path.display(), text.trim_end())
            }
            Ok(_) => format!("; {} is empty", path.display()),
            Err(e) => format!("; could not read {}: {e}", path.display()),
        }
    }

    /// The processes this child's figures are read from: itself, and with
    /// [`Accounting::Tree`] its live descendants.
    fn accounted(&self) -> Vec<u32> {
        match self.accounting {
            Accounting::Process => vec![self.pid],
            Accounting::Tree => {
                let mut pids = vec![self.pid];
                pids.extend(procfs::descendants(self.pid));
                pids
            }
        }
    }

    /// CPU time of the child so far (with [`Accounting::Tree`], of its live process tree),
    /// plus its companions'.
    pub fn cpu_times(&self) -> anyhow::Result<CpuTimes> {
        let mut total = procfs::cpu_times(Pid::Other(self.pid))?;
        for pid in self.accounted().into_iter().skip(1) {
            // A descendant may exit between listing and reading: skip it.
            if let Ok(t) = procfs::cpu_times(Pid::Other(pid)) {
                total.user_secs += t.user_secs;
                total.system_secs += t.system_secs;
            }
        }
        for companion in &self.companions {
            let t = companion.cpu_times()?;
            total.user_secs += t.user_secs;
            total.system_secs += t.system_secs;
        }
        Ok(total)
    }

    /// Peak RSS of the child so far (`VmHWM`; with [`Accounting::Tree`], summed over its live
    /// process tree, an upper bound since shared pages count once per process), plus its
    /// companions'.
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        let mut total = procfs::peak_rss_bytes(Pid::Other(self.pid))?;
        for pid in self.accounted().into_iter().skip(1) {
            total += procfs::peak_rss_bytes(Pid::Other(pid)).unwrap_or(0);
        }
        for companion in &self.companions {
            total += companion.peak_rss_bytes()?;
        }
        Ok(total)
    }

    /// Sends `signal` (e.g. `TERM`, `KILL`) to the child's whole process group with `kill(1)`.
    fn signal_group(&self, signal: &str) {
        let _ = std::process::Command::new("kill")
            .args(["-s", signal, "--", &format!("-{}", self.pid)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Waits until `addr` accepts TCP connections, failing if the child exits or `within` passes.
    pub async fn wait_until_accepting(
        &mut self,
        addr: SocketAddr,
        within: Duration,
    ) -> anyhow::Result<()> {
        const POLL: Duration = Duration::from_millis(50);
        let deadline = Instant::now() + within;
        // Bounded by `deadline`: each iteration waits at most ~POLL + 200 ms.
        loop {
            self.check_alive()
                .with_context(|| format!("{} stopped before accepting on {addr}", self.name))?;
            let attempt = tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(addr),
            )
            .await;
            if matches!(attempt, Ok(Ok(_))) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not accept connections on {addr} within {within:?}{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Reads the first stdout line (stdout must be piped), failing after `within`.
    pub async fn first_stdout_line(&mut self, within: Duration) -> anyhow::Result<String> {
        let stdout = self
            .take_stdout()
            .with_context(|| format!("{}'s stdout is not piped", self.name))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        match tokio::time::timeout(within, lines.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => {
                self.check_alive()?;
                bail!("{} closed stdout without printing a line", self.name)
            }
            Ok(Err(e)) => Err(e).with_context(|| format!("reading {}'s stdout", self.name)),
            Err(_) => {
                self.check_alive()?;
                bail!("{} printed nothing within {within:?}", self.name)
            }
        }
    }

    /// Stops the companions, then the child's process group: SIGTERM (a graceful stop, e.g.
    /// nginx's fast shutdown), SIGKILL after 5 s, and reaps the child.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for companion in std::mem::take(&mut self.companions) {
            Box::pin(companion.stop()).await?;
        }
        if self.child.try_wait()?.is_none() {
            self.signal_group("TERM");
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_err()
            {
                self.signal_group("KILL");
                tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                    .await
                    .with_context(|| format!("{} did not exit after SIGKILL", self.name))??;
            }
        }
        // Whatever of the group is left (workers of a master that died first).
        self.signal_group("KILL");
        self.stopped = true;
        Ok(())
    }
}

impl Drop for ManagedChild {
    /// On error paths and Ctrl-C: kill the whole process group, not just the child.
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        if matches!(self.child.try_wait(), Ok(None)) || self.accounting == Accounting::Tree {
            self.signal_group("KILL");
        }
    }
}

/// The last `max` bytes of a file, from the start of a line.
pub fn tail(path: &Path, max: u64) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut buf = Vec::new();
    file.take(max).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    Ok(if len > max {
        text.split_once('\n')
            .map_or(String::new(), |(_, rest)| rest.to_owned())
    } else {
        text.into_owned()
    })
}

/// A child's stdout and stderr both appended to one file.
pub fn log_stdio(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let err = file.try_clone()?;
    Ok((Stdio::from(file), Stdio::from(err)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_plans() {
        let taskset = Some(PathBuf::from("/usr/bin/taskset"));
        let two = Pinning::plan(PinMode::Auto, &[0, 1], taskset.clone());
        assert_eq!(two.sut_cpus.as_deref(), Some("0"));
        assert_eq!(two.generator_cpus.as_deref(), Some("1"));
        assert_eq!(
            two.description,
            "pinned with taskset: systems under test on CPU 0, load generator on CPU 1"
        );
        assert_eq!(two.sut_cpu_count(&[0, 1]), 1);

        let four = Pinning::plan(PinMode::Auto, &[0, 1, 2, 3], taskset.clone());
        assert_eq!(four.sut_cpus.as_deref(), Some("0-2"));
        assert_eq!(four.generator_cpus.as_deref(), Some("3"));
        assert_eq!(four.sut_cpu_count(&[0, 1, 2, 3]), 3);

        let one = Pinning::plan(PinMode::Auto, &[0], taskset.clone());
        assert_eq!(one.sut_cpus, None);
        assert!(one.description.contains("fewer than 2 CPUs"));
        assert!(
            Pinning::plan(PinMode::Auto, &[0, 1], None)
                .description
                .contains("taskset not found")
        );
        assert!(
            Pinning::plan(PinMode::Off, &[0, 1], taskset)
                .description
                .contains("--pin off")
        );
    }

    #[test]
    fn pinned_commands_go_through_taskset() {
        let pinning = Pinning::plan(
            PinMode::Auto,
            &[0, 1],
            Some(PathBuf::from("/usr/bin/taskset")),
        );
        let command = pinning.command(Path::new("/bin/true"), pinning.sut_cpus.as_deref());
        let std = command.as_std();
        assert_eq!(std.get_program(), "/usr/bin/taskset");
        let args: Vec<_> = std.get_args().collect();
        assert_eq!(args, ["-c", "0", "/bin/true"]);
        let plain =
            Pinning::plan(PinMode::Off, &[0, 1], None).command(Path::new("/bin/true"), Some("0"));
        assert_eq!(plain.as_std().get_program(), "/bin/true");
    }

    #[test]
    fn free_ports_are_loopback() -> anyhow::Result<()> {
        let addrs = free_loopback_ports(3)?;
        assert_eq!(addrs.len(), 3);
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() != 0));
        assert!(addrs[0] != addrs[1] && addrs[1] != addrs[2] && addrs[0] != addrs[2]);
        Ok(())
    }

    fn sleeper(name: &str, secs: &str) -> anyhow::Result<ManagedChild> {
        let mut command = Command::new("sleep");
        command.arg(secs).stdin(Stdio::null());
        ManagedChild::spawn(name, command, None)
    }

    #[tokio::test]
    async fn companions_count_with_their_server_and_must_stay_alive() -> anyhow::Result<()> {
        let mut server = sleeper("server", "30")?;
        let companion = sleeper("logger", "30")?;
        let pids = [Pid::Other(server.pid()), Pid::Other(companion.pid())];
        server.add_companion(companion);
        // High-water marks only grow (the processes may still be starting): the sum read
        // between two readings of both lies between their sums.
        let each = || -> anyhow::Result<u64> {
            Ok(procfs::peak_rss_bytes(pids[0])? + procfs::peak_rss_bytes(pids[1])?)
        };
        // Let both finish starting (`sleep` exec'd) so their marks are settled.
        let mut last = each()?;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = each()?;
            if now == last {
                break;
            }
            last = now;
        }
        let before = each()?;
        let total = server.peak_rss_bytes()?;
        let after = each()?;
        assert!(
            procfs::peak_rss_bytes(pids[1])? > 0,
            "the companion has an RSS"
        );
        assert!(
            (before..=after).contains(&total),
            "{before} ≤ {total} ≤ {after}"
        );
        server.cpu_times()?;
        server.check_alive()?;
        server.stop().await?;

        // A companion that exits makes its server's liveness check fail, naming both.
        let mut server = sleeper("server", "30")?;
        server.add_companion(sleeper("logger", "0")?);
        let failed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Err(e) = server.check_alive() {
                    return format!("{e:#}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await?;
        assert!(
            failed.contains("a companion of server stopped") && failed.contains("logger"),
            "{failed}"
        );
        server.stop().await?;
        Ok(())
    }

    #[test]
    fn tail_starts_at_a_line() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("cathedral-bench-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("log");
        std::fs::write(&path, "first line\nsecond\nthird\n")?;
        assert_eq!(tail(&path, 1000)?, "first line\nsecond\nthird\n");
        assert_eq!(tail(&path, 10)?, "third\n");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
