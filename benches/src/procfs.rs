//! The few Linux `/proc` figures the harness reports: CPU time of a process, its peak RSS
//! (`VmHWM`), the CPUs this process may run on, machine-wide busy CPU time (to tell how much
//! other work shared the machine during a measurement), and a little machine description.
//!
//! Reading `/proc` keeps the crate free of `unsafe` (the workspace forbids it), so no
//! `getrusage` or `sched_getaffinity` through libc.

use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// User and system CPU time consumed by a whole process (all threads), in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct CpuTimes {
    pub user_secs: f64,
    pub system_secs: f64,
}

impl CpuTimes {
    pub fn total_secs(&self) -> f64 {
        self.user_secs + self.system_secs
    }

    /// CPU time spent between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user_secs: (self.user_secs - earlier.user_secs).max(0.0),
            system_secs: (self.system_secs - earlier.system_secs).max(0.0),
        }
    }
}

/// Which process to read: this one, or another by pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    SelfProcess,
    Other(u32),
}

impl Pid {
    fn proc_path(self, file: &str) -> PathBuf {
        match self {
            Pid::SelfProcess => PathBuf::from(format!("/proc/self/{file}")),
            Pid::Other(pid) => PathBuf::from(format!("/proc/{pid}/{file}")),
        }
    }
}

/// CPU time of a process so far, from `/proc/<pid>/stat` (10 ms resolution at the usual 100 Hz).
pub fn cpu_times(pid: Pid) -> anyhow::Result<CpuTimes> {
    let path = pid.proc_path("stat");
    let stat =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (utime, stime) =
        parse_stat_ticks(&stat).with_context(|| format!("parsing {}", path.display()))?;
    let hz = clock_ticks_per_sec() as f64;
    Ok(CpuTimes {
        user_secs: utime as f64 / hz,
        system_secs: stime as f64 / hz,
    })
}

/// `utime` and `stime` (fields 14 and 15, in clock ticks) of a `/proc/<pid>/stat` line. The
/// command name in parentheses may itself contain spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the command name come field 3 (state) onwards: utime is field 14, i.e. index 11.
    let utime = fields.nth(11)?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// CPU seconds of this process plus its waited-for children (`utime + stime + cutime +
/// cstime`): a child such as the load generator is included once it has been reaped.
pub fn self_and_reaped_children_secs() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    let ticks = parse_stat_ticks_with_children(&stat).context("parsing /proc/self/stat")?;
    Ok(ticks as f64 / clock_ticks_per_sec() as f64)
}

/// `utime + stime + cutime + cstime` (fields 14 to 17) of a `/proc/<pid>/stat` line.
pub fn parse_stat_ticks_with_children(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    (fields.len() == 4).then(|| fields.iter().sum())
}

/// The live descendants of `pid` (children, their children, ...), from the parent pid of
/// every process in `/proc`. Best effort: processes that vanish while listing are skipped.
pub fn descendants(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            Some((p, parse_stat_ppid(&stat)?))
        })
        .collect();
    descendants_of(pid, &parents)
}

/// The descendants of `root` in a list of `(pid, parent pid)` pairs, breadth first.
pub fn descendants_of(root: u32, parents: &[(u32, u32)]) -> Vec<u32> {
    let mut found = Vec::new();
    let mut frontier = vec![root];
    // Bounded: every pid is added at most once (a pid is its own parent only for pid 0).
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in parents {
            if ppid == parent && pid != root && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

/// The parent pid (field 4) of a `/proc/<pid>/stat` line.
pub fn parse_stat_ppid(stat: &str) -> Option<u32> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Busy CPU seconds of the whole machine since boot, all CPUs summed (`/proc/stat`).
pub fn machine_busy_secs() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks = parse_machine_busy_ticks(&stat).context("parsing /proc/stat")?;
    Ok(ticks as f64 / clock_ticks_per_sec() as f64)
}

/// The busy ticks of the aggregate `cpu` line of `/proc/stat`: user, nice, system, irq,
/// softirq and steal (not idle or iowait; guest time is already inside user and nice).
pub fn parse_machine_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    (v.len() >= 4).then(|| at(0) + at(1) + at(2) + at(5) + at(6) + at(7))
}

/// The kernel's clock-tick rate for `/proc` times (`AT_CLKTCK` in the auxiliary vector),
/// falling back to 100, which is what Linux reports on every common architecture.
pub fn clock_ticks_per_sec() -> u64 {
    std::fs::read("/proc/self/auxv")
        .ok()
        .and_then(|auxv| parse_auxv_clktck(&auxv))
        .filter(|hz| *hz > 0)
        .unwrap_or(100)
}

/// Finds `AT_CLKTCK` (type 17) in a native-endian auxiliary vector of word-sized pairs.
pub fn parse_auxv_clktck(auxv: &[u8]) -> Option<u64> {
    const AT_NULL: u64 = 0;
    const AT_CLKTCK: u64 = 17;
    let word = std::mem::size_of::<usize>();
    let read = |chunk: &[u8]| -> Option<u64> {
        match word {
            8 => Some(u64::from_ne_bytes(chunk.try_into().ok()?)),
            4 => Some(u64::from(u32::from_ne_bytes(chunk.try_into().ok()?))),
            _ => None,
        }
    };
    for pair in auxv.chunks_exact(word * 2) {
        let key = read(&pair[..word])?;
        let value = read(&pair[word..])?;
        match key {
            AT_NULL => return None,
            AT_CLKTCK => return Some(value),
            _ => {}
        }
    }
    None
}

/// Peak resident set size of a process in bytes (`VmHWM` in `/proc/<pid>/status`).
pub fn peak_rss_bytes(pid: Pid) -> anyhow::Result<u64> {
    let path = pid.proc_path("status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_status_kb(&status, "VmHWM")
        .map(|kb| kb * 1024)
        .with_context(|| format!("no VmHWM in {}", path.display()))
}

/// The value of a `Key:   1234 kB` line of `/proc/<pid>/status`, in kB.
pub fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// The CPUs this process may run on (`Cpus_allowed_list` of `/proc/self/status`).
pub fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .and_then(|list| parse_cpu_list(list.trim()))
        .context("no readable Cpus_allowed_list in /proc/self/status")
}

/// Parses a kernel CPU list such as `0-3,6,8-9`. Ranges wider than 4096 CPUs are refused.
pub fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    const MAX_CPUS: usize = 4096;
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi): (usize, usize) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
                if hi < lo || hi - lo >= MAX_CPUS || cpus.len() + (hi - lo) >= MAX_CPUS {
                    return None;
                }
                cpus.extend(lo..=hi);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    (!cpus.is_empty()).then_some(cpus)
}

/// Formats CPUs back into the `taskset -c` list form, e.g. `[0, 1, 2, 5]` -> `0-2,5`.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = cpus.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if end == start {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// What the results file records about the machine.
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    pub cpu_model: Option<String>,
    pub online_cpus: Option<usize>,
    pub allowed_cpus: Option<String>,
    pub kernel: Option<String>,
    pub memory_total_bytes: Option<u64>,
}

impl MachineInfo {
    /// Best effort: fields that cannot be read stay `None`.
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned()),
            online_cpus: std::thread::available_parallelism().ok().map(usize::from),
            allowed_cpus: allowed_cpus().ok().map(|c| format_cpu_list(&c)),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_owned()),
            memory_total_bytes: parse_status_kb(&meminfo, "MemTotal").map(|kb| kb * 1024),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_are_counted_from_the_last_parenthesis() {
        let stat = "7213 (cat) R 7207 7207 6172 0 -1 4194304 99 0 0 0 12 34 0 0 20 0 1 0 33462";
        assert_eq!(parse_stat_ticks(stat), Some((12, 34)));
        let tricky = "42 (a) b (c) S 1 1 1 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 1";
        assert_eq!(parse_stat_ticks(tricky), Some((5, 6)));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_ticks("1 (x) R 1 2"), None);
    }

    #[test]
    fn process_trees_are_walked_from_parent_pids() {
        assert_eq!(
            parse_stat_ppid("7213 (a) b) S 7207 7207 6172 0 -1"),
            Some(7207)
        );
        assert_eq!(parse_stat_ppid("garbage"), None);
        // 10 → 11, 12; 12 → 13; 20 is unrelated.
        let parents = [(11, 10), (12, 10), (13, 12), (20, 1), (10, 1)];
        let mut found = descendants_of(10, &parents);
        found.sort_unstable();
        assert_eq!(found, [11, 12, 13]);
        assert!(descendants_of(13, &parents).is_empty());
        // This process's descendants are listed (none right now, or the test harness's own).
        assert!(!descendants(std::process::id()).contains(&std::process::id()));
    }

    #[test]
    fn machine_and_children_ticks_parse() {
        let stat = "7213 (c a) R 7207 7207 6172 0 -1 4194304 99 0 0 0 12 34 5 6 20 0 1 0 33462";
        assert_eq!(parse_stat_ticks_with_children(stat), Some(12 + 34 + 5 + 6));
        assert_eq!(parse_stat_ticks_with_children("1 (x) R 1 2"), None);
        let proc_stat = "cpu  100 2 30 5000 7 1 4 3 9 0\ncpu0 50 1 15 2500 3 0 2 1 0 0\n";
        assert_eq!(
            parse_machine_busy_ticks(proc_stat),
            Some(100 + 2 + 30 + 1 + 4 + 3)
        );
        assert_eq!(parse_machine_busy_ticks("cpu  1 2 3 4\n"), Some(6));
        assert_eq!(parse_machine_busy_ticks("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_machine_busy_ticks("cpu  1 x 3 4\n"), None);
    }

    #[test]
    fn own_cpu_time_and_rss_are_readable() -> anyhow::Result<()> {
        assert!(self_and_reaped_children_secs()? >= 0.0);
        assert!(machine_busy_secs()? > 0.0);
        let cpu = cpu_times(Pid::SelfProcess)?;
        assert!(cpu.total_secs() >= 0.0);
        assert!(peak_rss_bytes(Pid::SelfProcess)? > 0);
        assert!(!allowed_cpus()?.is_empty());
        assert_eq!(clock_ticks_per_sec(), 100, "Linux reports USER_HZ = 100");
        Ok(())
    }

    #[test]
    fn auxv_lookup_finds_clktck_and_stops_at_null() {
        let word = |v: u64| -> Vec<u8> {
            if std::mem::size_of::<usize>() == 8 {
                v.to_ne_bytes().to_vec()
            } else {
                (v as u32).to_ne_bytes().to_vec()
            }
        };
        let auxv: Vec<u8> = [6, 4096, 17, 250, 0, 0]
            .iter()
            .flat_map(|v| word(*v))
            .collect();
        assert_eq!(parse_auxv_clktck(&auxv), Some(250));
        let no_tick: Vec<u8> = [6, 4096, 0, 0, 17, 250]
            .iter()
            .flat_map(|v| word(*v))
            .collect();
        assert_eq!(parse_auxv_clktck(&no_tick), None);
    }

    #[test]
    fn status_values_in_kb() {
        let status = "Name:\tcat\nVmPeak:\t    9999 kB\nVmHWM:\t    1752 kB\nThreads:\t1\n";
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(1752));
        assert_eq!(parse_status_kb(status, "VmRSS"), None);
        assert_eq!(parse_status_kb(status, "Threads"), None);
    }

    fn check_cpus(list: &str, expected: Option<&[usize]>) {
        assert_eq!(parse_cpu_list(list).as_deref(), expected, "{list:?}");
        if let Some(cpus) = expected {
            assert_eq!(
                parse_cpu_list(&format_cpu_list(cpus)).as_deref(),
                Some(cpus)
            );
        }
    }

    #[test]
    fn cpu_lists_parse_and_round_trip() {
        check_cpus("0-1", Some(&[0, 1]));
        check_cpus("0", Some(&[0]));
        check_cpus("0-2,5,7-8", Some(&[0, 1, 2, 5, 7, 8]));
        check_cpus("3,1,1", Some(&[1, 3]));
        check_cpus("", None);
        check_cpus("2-1", None);
        check_cpus("a", None);
        check_cpus("0-100000", None);
        assert_eq!(format_cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(format_cpu_list(&[1]), "1");
    }
}
