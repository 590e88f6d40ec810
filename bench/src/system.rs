//! What the suite reads from the operating system: the open-files limit,
//! a process's resident memory, and a description of the machine.

/// Raises this process's soft open-files limit to its hard limit (15 000
/// loopback connections need more than the usual 1 024). Returns the new
/// soft limit.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// `VmRSS` of a process, in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time counters, in clock ticks: the whole machine's (busy and all,
/// over every CPU, from `/proc/stat`), a server's and this process's.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSnapshot {
    pub machine_busy: u64,
    pub machine_total: u64,
    pub server: u64,
    pub client: u64,
}

fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses:
    // state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

impl CpuSnapshot {
    pub fn take(server: u32) -> CpuSnapshot {
        let (mut busy, mut total) = (0, 0);
        if let Some(line) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().next().map(String::from))
        {
            let ticks: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|t| t.parse().ok())
                .collect();
            total = ticks.iter().take(8).sum();
            // idle and iowait
            busy = total - ticks.get(3).copied().unwrap_or(0) - ticks.get(4).copied().unwrap_or(0);
        }
        CpuSnapshot {
            machine_busy: busy,
            machine_total: total,
            server: process_ticks(&server.to_string()).unwrap_or(0),
            client: process_ticks("self").unwrap_or(0),
        }
    }

    /// CPU used between two snapshots, in cores (1.0 = one CPU busy the
    /// whole time): the server, this load client, and everything else.
    pub fn cores_since(&self, earlier: &CpuSnapshot, seconds: f64) -> (f64, f64, f64) {
        // SAFETY: sysconf only reads a configuration value.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cores = |ticks: u64| ticks as f64 / hz / seconds.max(1e-3);
        let server = cores(self.server.saturating_sub(earlier.server));
        let client = cores(self.client.saturating_sub(earlier.client));
        let busy = cores(self.machine_busy.saturating_sub(earlier.machine_busy));
        (server, client, (busy - server - client).max(0.0))
    }
}

/// `nproc`, the CPU model and the kernel, for the report.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or_else(String::new, |kib| {
            format!(", {:.0} GiB RAM", kib as f64 / 1024.0 / 1024.0)
        });
    format!("{cpus} CPUs (nproc), {model}{memory}, Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_rss() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
