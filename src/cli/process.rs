//! Settings of the whole process, for the binaries that embed emporium to opt into; the
//! library applies none of them itself (as it sets no global allocator).

/// Turns transparent huge pages off for this process; on systems other than Linux there is
/// nothing to turn off.
///
/// mimalloc (the `emporium` binary's allocator) asks for huge pages on the memory it maps
/// and gives freed memory back to the kernel in 64 KiB pieces, so touching such a piece
/// again faulted in and zeroed a whole new 2 MiB page: 12% of the server's time over a
/// promotion day. The README has the measurements. The setting lasts for the life of the
/// process and is inherited by its children.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and reads or writes no
        // memory of this process; it sets a flag the kernel checks when it faults in a page.
        let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends this process's logs to standard error, in colour when it is a terminal, at the
/// level RUST_LOG sets (warnings by default).
pub fn log_to_stderr() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colour).with_writer(std::io::stderr).init();
}
