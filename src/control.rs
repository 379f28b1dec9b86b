//! The `.control` protocol: how a CLI command runs inside the mount that
//! holds the store. Both halves use this module: the client
//! (`snapfs` while a mount runs) and the server (the mount's handler).
//!
//! One exchange per open of `/.control` (mode 0600, its owner only):
//!
//! 1. The client writes the **request**: the command's arguments after
//!    `snapfs`, as a JSON array of strings, e.g.
//!    `["snapshot","list","--json"]`. It may take several writes; at most
//!    [`MAX_REQUEST`] bytes (more is EFBIG).
//! 2. The client reads the same handle from offset 0. The first read runs
//!    the command; the **response** is a JSON object
//!    `{"code": 0, "stdout": "...", "stderr": "..."}`: the exit status and
//!    what the command printed, for the client to print and exit with.
//!    A request that is not a JSON array of strings gets code 2 and a
//!    line on stderr.
//!
//! A write after the response was read starts the request over with the
//! bytes so far plus the new ones, and the next read runs it again.

use serde::{Deserialize, Serialize};

/// The largest request taken: a command line, as JSON, is far smaller
/// (the kernel caps a whole argv at 2 MiB, usually far less).
pub const MAX_REQUEST: usize = 1 << 20;

/// What the mount answers: exit status and output of the command.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct Response {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The request bytes for `args` (the arguments after `snapfs`).
pub fn encode_request(args: &[String]) -> Vec<u8> {
    // A list of strings always serializes.
    serde_json::to_vec(args).unwrap_or_default()
}

/// The arguments of a request, or why it is malformed.
pub fn decode_request(request: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    serde_json::from_slice(request)
}

impl Response {
    /// A response that only says on stderr why the request was refused.
    pub fn refused(code: i32, stderr: String) -> Response {
        Response {
            code,
            stderr,
            ..Response::default()
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Strings and an integer always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Response, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_response_formats_are_json() {
        let args = vec!["snapshot".to_string(), "list".to_string()];
        assert_eq!(encode_request(&args), br#"["snapshot","list"]"#);
        assert_eq!(decode_request(br#"["gc"]"#).unwrap(), vec!["gc"]);
        assert!(decode_request(b"{}").is_err());
        let response = Response {
            code: 1,
            stdout: "out".into(),
            stderr: "err\n".into(),
        };
        assert_eq!(
            response.encode(),
            br#"{"code":1,"stdout":"out","stderr":"err\n"}"#
        );
        assert_eq!(Response::decode(&response.encode()).unwrap(), response);
    }
}
