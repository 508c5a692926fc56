//! The process's own resource use, read from `/proc/self` at scrape time (0 where it cannot be
//! read: another OS, or a restricted /proc), and from the allocator where the binary can say.

use std::sync::OnceLock;

/// What the memory allocator says of itself, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct AllocatorStats {
    /// Allocated and not yet freed: live data, without fragmentation or cached pages, so it moves
    /// with what Juggler holds rather than with the allocator's history (as RSS does).
    pub allocated: u64,
    /// Physically resident pages the allocator has mapped, metadata included.
    pub resident: u64,
}

/// Reads [`AllocatorStats`]; `None` when the allocator cannot say.
pub type AllocatorReader = fn() -> Option<AllocatorStats>;

static ALLOCATOR: OnceLock<AllocatorReader> = OnceLock::new();

/// Installs the reader of the allocator the binary chose (the runtime does not pick one). Only the
/// first call counts: there is one allocator per process.
pub fn report_allocator(reader: AllocatorReader) {
    let _ = ALLOCATOR.set(reader);
}

/// The allocator's figures now, if the binary installed a reader and it could read them.
pub(super) fn allocator() -> Option<AllocatorStats> {
    ALLOCATOR.get().and_then(|read| read())
}

/// Resident set size.
pub(super) fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// Open file descriptors (sockets, spill files, the listeners…).
pub(super) fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count() as u64)
}
