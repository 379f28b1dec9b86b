//! The AWS tools' shared files: `~/.aws/config` and `~/.aws/credentials`
//! (or `AWS_CONFIG_FILE` and `AWS_SHARED_CREDENTIALS_FILE`), profile
//! `AWS_PROFILE` or `default`. object_store reads the environment only;
//! this fills in what the environment leaves out, as the AWS tools do
//! (environment variables win over the files).

use std::collections::HashMap;
use std::path::PathBuf;

/// What a profile sets; None where it says nothing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Profile {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

impl Profile {
    /// The profile the environment names, from the files that exist.
    pub fn from_files() -> Profile {
        let name = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let file = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
        };
        let read = |path: Option<PathBuf>| {
            path.and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default()
        };
        let config = read(file("AWS_CONFIG_FILE", "config"));
        let credentials = read(file("AWS_SHARED_CREDENTIALS_FILE", "credentials"));
        Profile::parse(&name, &config, &credentials)
    }

    /// Profile `name` from the texts of the config file (sections
    /// `[profile NAME]`, or `[default]`) and the credentials file
    /// (sections `[NAME]`); the credentials file wins for keys.
    pub fn parse(name: &str, config: &str, credentials: &str) -> Profile {
        let in_config = if name == "default" {
            section(config, |s| s == "default" || s == "profile default")
        } else {
            section(config, |s| s == format!("profile {name}"))
        };
        let in_credentials = section(credentials, |s| s == name);
        let get = |key: &str| {
            in_credentials
                .get(key)
                .or_else(|| in_config.get(key))
                .cloned()
        };
        Profile {
            access_key_id: get("aws_access_key_id"),
            secret_access_key: get("aws_secret_access_key"),
            session_token: get("aws_session_token"),
            region: get("region"),
            endpoint_url: get("endpoint_url"),
        }
    }
}

/// The `key = value` pairs of the first section whose name `wanted` takes;
/// `#` and `;` start comments.
fn section(text: &str, wanted: impl Fn(&str) -> bool) -> HashMap<String, String> {
    let mut pairs = HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if inside {
                break;
            }
            inside = wanted(name.trim());
            continue;
        }
        if let (true, Some((key, value))) = (inside, line.split_once('=')) {
            pairs.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
[default]
region = eu-west-1

# a LAN server
[profile lab]
region=us-east-1
endpoint_url = http://10.0.0.5:8333
";
    const CREDENTIALS: &str = "\
[default]
aws_access_key_id = AKIDEFAULT
aws_secret_access_key = secret-default

[lab]
aws_access_key_id = AKILAB
aws_secret_access_key = secret-lab
";

    #[test]
    fn a_named_profile_takes_its_config_and_credentials_sections() {
        let lab = Profile::parse("lab", CONFIG, CREDENTIALS);
        assert_eq!(lab.access_key_id.as_deref(), Some("AKILAB"));
        assert_eq!(lab.secret_access_key.as_deref(), Some("secret-lab"));
        assert_eq!(lab.region.as_deref(), Some("us-east-1"));
        assert_eq!(lab.endpoint_url.as_deref(), Some("http://10.0.0.5:8333"));
        assert_eq!(lab.session_token, None);
    }

    #[test]
    fn the_default_profile_and_missing_ones() {
        let default = Profile::parse("default", CONFIG, CREDENTIALS);
        assert_eq!(default.access_key_id.as_deref(), Some("AKIDEFAULT"));
        assert_eq!(default.region.as_deref(), Some("eu-west-1"));
        assert_eq!(default.endpoint_url, None);
        assert_eq!(
            Profile::parse("nope", CONFIG, CREDENTIALS),
            Profile::default()
        );
    }
}
