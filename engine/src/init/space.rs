//! Free disk space and available memory, checked before anything is
//! written so that a checkpoint that cannot fit fails at once.

use std::path::{Path, PathBuf};

use super::InitError;

const GIB: f64 = (1u64 << 30) as f64;

/// What the machine has room for. Tests pass their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Available {
    /// Free bytes on the file system that will hold the checkpoint
    /// (`None`: unknown, not checked).
    pub disk_bytes: Option<u64>,
    /// `MemAvailable` from `/proc/meminfo` (`None`: unknown, not checked).
    pub memory_bytes: Option<u64>,
}

/// Measures free space at `path` (or at its nearest existing ancestor)
/// and the memory available now.
pub fn available(path: &Path) -> Available {
    Available {
        disk_bytes: disk_free(path),
        memory_bytes: mem_available(),
    }
}

/// The closest existing folder at or above `path`.
fn existing_ancestor(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    abs.ancestors()
        .find(|p| p.exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

#[cfg(unix)]
fn disk_free(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(existing_ancestor(path).as_path()).ok()?;
    // Blocks an unprivileged user may use, in fragment-size units.
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(not(unix))]
fn disk_free(_path: &Path) -> Option<u64> {
    None
}

fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text)
}

/// `MemAvailable:  123456 kB` → bytes.
pub(crate) fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub(crate) fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

/// Fails when `needed_disk` or `needed_memory` bytes exceed what is there.
pub(crate) fn check(
    avail: Available,
    path: &Path,
    needed_disk: u64,
    needed_memory: u64,
) -> Result<(), InitError> {
    if let Some(free) = avail.disk_bytes
        && needed_disk > free
    {
        return Err(InitError::NotEnoughSpace {
            resource: "disk space",
            path: existing_ancestor(path),
            needed_gib: gib(needed_disk),
            available_gib: gib(free),
        });
    }
    if let Some(free) = avail.memory_bytes
        && needed_memory > free
    {
        return Err(InitError::NotEnoughSpace {
            resource: "memory",
            path: PathBuf::from("/proc/meminfo"),
            needed_gib: gib(needed_memory),
            available_gib: gib(free),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_parsed() {
        let text = "MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_meminfo(text), Some(2048 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn disk_free_is_measured_through_missing_folders() {
        let free = available(Path::new("/tmp/does/not/exist/yet")).disk_bytes;
        assert!(free.is_some_and(|b| b > 0));
    }
}
