//! The `snapfs` binary: parse, run, print the error chain, exit.

mod cli;

use clap::Parser;

fn main() {
    // Every file of the store private, also those sled makes later on its
    // own threads; outputs made for the user get the user's umask back.
    snapfs::modes::make_process_private();
    // Chunk buffers (64 KiB and up) come from mmap and go back to the
    // system when freed: with many threads allocating and freeing chunks,
    // heap arenas would otherwise keep several times the cache in memory.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,fuser=error,sled=off"),
    )
    .init();
    // Usage errors exit with status 2 (clap's default).
    let args = cli::Cli::parse();
    if let Err(err) = cli::run(args) {
        eprintln!("snapfs: {}", cli::error_line(&err));
        std::process::exit(1);
    }
}
