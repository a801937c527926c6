//! glibc's allocator with fixed thresholds.
//!
//! glibc raises its mmap threshold each time a large block is freed (up to
//! 32 MiB): after a slide frees a few tables of some megabytes, tables of
//! that size come from the heap instead, and what they leave when freed
//! stays resident. With the threshold fixed at 1 MiB, large tables are
//! mapped and given back whole; at a million addresses the process then
//! needs about a fifth less resident memory, at the same CPU (BENCHMARKS.md).
//!
//! The thresholds can only be fixed before the allocator starts, from the
//! environment, so ipstats starts itself again with them (the same process:
//! `exec` keeps its id, its descriptors and its arguments). An operator
//! who sets any of the allocator's variables keeps theirs; `GLIBC_TUNABLES=`
//! (empty) keeps glibc's own behaviour.

/// The variables ipstats starts with.
pub const SETTINGS: [(&str, &str); 2] = [
    ("MALLOC_MMAP_THRESHOLD_", "1048576"),
    ("MALLOC_TRIM_THRESHOLD_", "1048576"),
];

/// Variables by which an operator sets the allocator's behaviour.
const CHOSEN: [&str; 3] = [
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "GLIBC_TUNABLES",
];

/// Whether to start again with [`SETTINGS`], given which variables are set:
/// not after the restart, and not when the operator chose.
pub fn wanted(is_set: impl Fn(&str) -> bool) -> bool {
    !CHOSEN.iter().any(|name| is_set(name))
}

/// Replaces this process by the same program and arguments with
/// [`SETTINGS`] when [`wanted`]. Returns only when it does not: `None` when
/// not wanted, the error when `exec` failed (the process then runs with
/// glibc's defaults).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn fix_thresholds() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    if !wanted(|name| std::env::var_os(name).is_some()) {
        return None;
    }
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_default();
    // /proc/self/exe, not the path: it is this very binary even if the file
    // was replaced since.
    let error = std::process::Command::new("/proc/self/exe")
        .arg0(program)
        .args(args)
        .envs(SETTINGS)
        .exec();
    Some(error)
}

/// Other allocators have no such thresholds.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn fix_thresholds() -> Option<std::io::Error> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operator_setting_or_the_restart_itself_stops_a_restart() {
        assert!(wanted(|_| false));
        for name in CHOSEN {
            assert!(!wanted(|n| n == name), "{name}");
        }
        // After the restart the settings are in the environment.
        assert!(!wanted(|n| SETTINGS.iter().any(|(s, _)| *s == n)));
        assert!(wanted(|n| n == "MALLOC_ARENA_MAX"));
    }
}
