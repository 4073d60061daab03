//! What machine a rehearsal ran on, and how busy its cores were while orders were placed.
//!
//! A rehearsal's orders/s depend on the processor as much as on emporium: the same build on
//! the same kind of 2-core guest has measured twice as fast on one processor as on another.
//! So a report names the processor and the cores it had, and splits the whole machine's CPU
//! time over the order phase into user, system, idle, waiting for the disk and stolen by the
//! host. Over HTTP on one machine the system share is mostly the kernel's loopback TCP, which
//! no change in emporium's own code removes; an idle share says the closed loop of submitters
//! left cores unused.
//!
//! Reading is the shell (`/proc/cpuinfo`, `/proc/stat`); parsing and the arithmetic are pure
//! functions, tested on fixed text. Where the files do not exist (not Linux) the report says
//! `None`.

use serde::Serialize;

/// The whole machine's CPU time so far, in the kernel's ticks, from the `cpu` line of
/// `/proc/stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTicks {
    /// User time, niced user time included (and so, as the kernel counts it, guests' time).
    pub user: u64,
    /// Kernel time, interrupts and soft interrupts (where the network stack runs) included.
    pub system: u64,
    /// Idle.
    pub idle: u64,
    /// Idle with a disk request outstanding.
    pub iowait: u64,
    /// Taken by the host for other guests.
    pub steal: u64,
}

/// Shares of the machine's CPU time over an interval; they add up to 1.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CpuShares {
    /// User time.
    pub user: f64,
    /// Kernel time.
    pub system: f64,
    /// Idle.
    pub idle: f64,
    /// Idle waiting for the disk.
    pub iowait: f64,
    /// Stolen by the host.
    pub steal: f64,
}

/// The `cpu` line of `/proc/stat`'s text; `None` when it has none or it is malformed.
///
/// Its columns are user, nice, system, idle, iowait, irq, softirq, steal and then guest
/// time, which the kernel already counts in user and nice; kernels before 2.6.11 have no
/// steal column, which then counts as 0.
pub fn parse_cpu_ticks(stat: &str) -> Option<CpuTicks> {
    let line = stat.lines().find(|line| line.split_whitespace().next() == Some("cpu"))?;
    let columns: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
    let column = |i: usize| columns.get(i).copied();
    let (user, nice, system, idle, iowait, irq, softirq) =
        (column(0)?, column(1)?, column(2)?, column(3)?, column(4)?, column(5)?, column(6)?);
    Some(CpuTicks {
        user: user.checked_add(nice)?,
        system: system.checked_add(irq)?.checked_add(softirq)?,
        idle,
        iowait,
        steal: column(7).unwrap_or(0),
    })
}

impl CpuTicks {
    /// The machine's CPU time so far; `None` where `/proc/stat` cannot be read.
    pub fn now() -> Option<CpuTicks> {
        parse_cpu_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// How the ticks from `before` to `self` divide; `None` when no tick passed or a counter
    /// went backwards.
    pub fn shares_since(&self, before: &CpuTicks) -> Option<CpuShares> {
        let user = self.user.checked_sub(before.user)?;
        let system = self.system.checked_sub(before.system)?;
        let idle = self.idle.checked_sub(before.idle)?;
        let iowait = self.iowait.checked_sub(before.iowait)?;
        let steal = self.steal.checked_sub(before.steal)?;
        let total = user.checked_add(system)?.checked_add(idle)?.checked_add(iowait)?.checked_add(steal)?;
        if total == 0 {
            return None;
        }
        let share = |ticks: u64| ticks as f64 / total as f64;
        let shares = CpuShares {
            user: share(user),
            system: share(system),
            idle: share(idle),
            iowait: share(iowait),
            steal: share(steal),
        };
        debug_assert!((shares.user + shares.system + shares.idle + shares.iowait + shares.steal - 1.0).abs() < 1e-9);
        Some(shares)
    }
}

/// The processor's name from `/proc/cpuinfo`'s text: the first `model name` (x86) or, where
/// there is none, the first `Model` or `CPU part` line (ARM).
pub fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Model", "CPU part"].iter().find_map(|key| {
        cpuinfo.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == *key && !value.trim().is_empty()).then(|| value.trim().to_owned())
        })
    })
}

/// The processor's name; `None` where `/proc/cpuinfo` cannot be read or names none.
pub fn cpu_model() -> Option<String> {
    parse_cpu_model(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

/// The cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(stat: &str, expected: Option<CpuTicks>) {
        assert_eq!(parse_cpu_ticks(stat), expected, "{stat:?}");
    }

    #[test]
    fn the_cpu_line_of_proc_stat_is_read_into_five_counters() {
        let ticks = |user, system, idle, iowait, steal| Some(CpuTicks { user, system, idle, iowait, steal });
        check("cpu  10 2 30 400 5 6 7 8 9 0\ncpu0 1 1 1 1 1 1 1 1 1 1\n", ticks(12, 43, 400, 5, 8));
        // The per-core lines are not the machine's.
        check("cpu0 1 1 1 1 1 1 1 1\ncpu  1 0 1 1 0 0 0 0\n", ticks(1, 1, 1, 0, 0));
        // An old kernel without the steal column.
        check("cpu 1 2 3 4 5 6 7\n", ticks(3, 16, 4, 5, 0));
        check("cpu 1 2 3 4 5 6\n", None);
        check("cpu 1 2 x 4 5 6 7 8\n", None);
        check("cpu0 1 2 3 4 5 6 7 8\n", None);
        check("", None);
        check(&format!("cpu {} 1 0 0 0 0 0 0\n", u64::MAX), None);
    }

    #[test]
    fn shares_divide_the_ticks_between_two_readings() {
        let before = CpuTicks { user: 100, system: 50, idle: 1000, iowait: 10, steal: 0 };
        let after = CpuTicks { user: 150, system: 90, idle: 1005, iowait: 15, steal: 0 };
        let shares = after.shares_since(&before).expect("ticks passed");
        assert_eq!(shares, CpuShares { user: 0.5, system: 0.4, idle: 0.05, iowait: 0.05, steal: 0.0 });
        assert_eq!(before.shares_since(&before), None, "no tick passed");
        assert_eq!(before.shares_since(&after), None, "counters went backwards");
    }

    #[test]
    fn the_processor_is_named_by_its_first_model_line() {
        let x86 = "processor\t: 0\nmodel name\t: AMD EPYC\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n";
        assert_eq!(parse_cpu_model(x86).as_deref(), Some("AMD EPYC"));
        let arm = "processor\t: 0\nCPU part\t: 0xd0c\n\nModel\t\t: Raspberry Pi 4\n";
        assert_eq!(parse_cpu_model(arm).as_deref(), Some("Raspberry Pi 4"));
        assert_eq!(parse_cpu_model("model name\t:   \n"), None);
        assert_eq!(parse_cpu_model(""), None);
    }
}
