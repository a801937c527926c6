//! The memory budget of the counting state (`--memory-limit`): how many
//! keys a summarized pane keeps so that every kept pane fits, and the least
//! budget a window shape can run in.

use super::counts::PaneCounts;
use super::distinct::Distinct;

/// Bytes set aside whatever the shape: the window's running counts of the
/// listed keys, the newest exact panes before they are folded.
pub const FLOOR_BYTES: usize = 1 << 20;

/// Keys a summarized pane keeps at the least, per level.
pub const MIN_CAPACITY: usize = 16;

/// Keys a summarized pane keeps at the most, per level.
const MAX_CAPACITY: usize = 1 << 20;

/// What one listed key may cost in a summarized pane: an IPv6 address's
/// lower bound (20 bytes), a network entry at each of the two levels (48
/// each), and a share of the running counts.
const BYTES_PER_KEY: usize = 20 + 2 * 48 + 32;

/// A summarized pane's fixed part: its sketch and its bookkeeping.
fn pane_fixed_bytes() -> usize {
    Distinct::default().bytes() + 2 * std::mem::size_of::<PaneCounts>() + 512
}

/// How the state keeps within its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The state's bytes at most.
    pub bytes: usize,
    /// Keys a summarized pane keeps per level.
    pub capacity: usize,
}

/// What the open pane may take of the budget: a quarter.
const OPEN_SHARE: usize = 4;

/// Bytes one address may cost in the open pane: its table entry (with the
/// table's slack) and its entry in the arrays the pane closes into.
const OPEN_BYTES_PER_KEY: usize = 48;

/// The least budget in which `kept_panes` panes fit, each summarized to
/// [`MIN_CAPACITY`] keys a level, beside the open pane's share.
pub fn minimum(kept_panes: usize) -> usize {
    let kept = FLOOR_BYTES + kept_panes * (pane_fixed_bytes() + MIN_CAPACITY * BYTES_PER_KEY);
    kept + kept / (OPEN_SHARE - 1)
}

impl Budget {
    /// What the kept panes and the window's running counts may take: the
    /// budget but the open pane's share.
    pub fn kept_bytes(&self) -> usize {
        self.bytes - self.bytes / OPEN_SHARE
    }

    /// Addresses the open pane may hold before what it counted so far is
    /// summarized.
    pub fn open_entries(&self) -> usize {
        (self.bytes / OPEN_SHARE / OPEN_BYTES_PER_KEY).max(4 * self.capacity)
    }

    /// The budget of `bytes` for `kept_panes` panes (the window and the
    /// history kept before it); `Err(minimum)` when it is below the least
    /// such a shape can run in. Half of what is left above the floor goes to
    /// summarized panes, shared equally.
    pub fn new(bytes: usize, kept_panes: usize) -> Result<Budget, usize> {
        let least = minimum(kept_panes);
        if bytes < least {
            return Err(least);
        }
        let share =
            (bytes - bytes / OPEN_SHARE).saturating_sub(FLOOR_BYTES) / 2 / kept_panes.max(1);
        let capacity = share.saturating_sub(pane_fixed_bytes()) / BYTES_PER_KEY;
        Ok(Budget {
            bytes,
            capacity: capacity.clamp(MIN_CAPACITY, MAX_CAPACITY),
        })
    }
}

/// A size as people write it: `512MiB`, `4GiB`, `1.5G`, `800MB`, `1048576`.
/// `K`/`M`/`G`/`T` and `KiB`… are powers of 1024, `KB`/`MB`… of 1000, a bare
/// number is bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok().filter(|n: &f64| n.is_finite())?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    let bytes = number * scale as f64;
    (bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// A size as [`parse_size`] reads it, in the largest binary unit that
/// keeps it whole to a tenth.
pub fn show_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, scale) in UNITS {
        if bytes >= scale {
            let value = bytes as f64 / scale as f64;
            return if value.fract() == 0.0 {
                format!("{value:.0}{unit}")
            } else {
                format!("{value:.1}{unit}")
            };
        }
    }
    format!("{bytes}B")
}

/// The default budget: a quarter of the machine's memory or of the
/// cgroup's limit, whichever is smaller (`None` when neither is known).
pub fn default_limit() -> Option<u64> {
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    let cgroup = cgroup_limit();
    let least = match (machine, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    least.map(|bytes| bytes / 4)
}

/// The memory limit of this process's cgroup (v2 `memory.max`, or v1's
/// `memory.limit_in_bytes`), if it has one.
fn cgroup_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in own.lines() {
        // v2: "0::/path"; v1: "N:memory:/path".
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else {
            continue;
        };
        if let Some(limit) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            // v1 writes a page-rounded i64::MAX for "no limit".
            .filter(|l| *l < (1 << 60))
        {
            return Some(limit);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("4GiB"), Some(4 << 30));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("800MB"), Some(800_000_000));
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size(" 2 GiB "), Some(2 << 30));
        for bad in [
            "",
            "MiB",
            "12 parsecs",
            "-1G",
            "1.2.3M",
            "1e9",
            "99999999999999999999T",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        assert_eq!(show_size(512 << 20), "512MiB");
        assert_eq!(show_size(3 << 29), "1.5GiB");
        assert_eq!(show_size(100), "100B");
    }

    #[test]
    fn a_budget_fits_every_kept_pane_or_names_the_least_that_would() {
        assert_eq!(Budget::new(1 << 20, 60), Err(minimum(60)));
        let least = Budget::new(minimum(3600), 3600).expect("the minimum itself runs");
        assert_eq!(least.capacity, MIN_CAPACITY);
        let roomy = Budget::new(4 << 30, 3600).expect("runs");
        assert!(roomy.capacity > 1000, "{roomy:?}");
        // Every kept pane, summarized to the capacity, fits the half it is given.
        let per_pane = pane_fixed_bytes() + roomy.capacity * BYTES_PER_KEY;
        assert!(3600 * per_pane <= (roomy.kept_bytes() - FLOOR_BYTES) / 2);
        assert!(roomy.kept_bytes() + roomy.open_entries() * OPEN_BYTES_PER_KEY <= roomy.bytes);
        assert!(minimum(60) < minimum(3600));
    }

    #[test]
    fn the_default_is_a_quarter_of_what_this_machine_allows() {
        let limit = default_limit().expect("this machine says its memory");
        let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
        let total_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("MemTotal");
        assert!(limit <= total_kib * 1024 / 4 && limit > 0, "{limit}");
    }
}
