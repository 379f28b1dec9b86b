//! The `snapfs` binary: parse, run, print the error chain, exit.

mod cli;

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,fuser=error")).init();
    // Usage errors exit with status 2 (clap's default).
    let args = cli::Cli::parse();
    if let Err(err) = cli::run(args) {
        eprintln!("snapfs: {err:#}");
        std::process::exit(1);
    }
}
