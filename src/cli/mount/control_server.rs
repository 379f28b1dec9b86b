//! The mount side of `/.control`: runs each request with the same code as
//! a local command (`execute`); the format is `snapfs::control`'s.

use std::ffi::OsString;
use std::sync::Arc;

use clap::Parser;

use crate::cli::{error_line, execute, Cli, Output};
use snapfs::control;
use snapfs::fs::ControlHandler;
use snapfs::Repository;

/// Runs `.control` requests with the same code as local commands.
pub fn control_handler(repo: Arc<Repository>) -> ControlHandler {
    Box::new(move |request: &[u8]| run_control_request(&repo, request).encode())
}

fn run_control_request(repo: &Repository, request: &[u8]) -> control::Response {
    let args = match control::decode_request(request) {
        Ok(args) => args,
        Err(e) => {
            return control::Response::refused(
                2,
                format!("snapfs: malformed control request: {e}\n"),
            )
        }
    };
    let argv =
        std::iter::once(OsString::from("snapfs")).chain(args.into_iter().map(OsString::from));
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => return control::Response::refused(e.exit_code(), e.render().to_string()),
    };
    let mut stdout = Vec::new();
    let result = execute(
        repo,
        cli.command,
        &mut Output {
            out: &mut stdout,
            interactive: false,
        },
    );
    let (code, stderr) = match result {
        Ok(()) => (0, String::new()),
        Err(e) => (1, format!("snapfs: {}\n", error_line(&e))),
    };
    control::Response {
        code,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr,
    }
}
