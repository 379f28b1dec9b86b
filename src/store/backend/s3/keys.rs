//! Where each object of a store lives in its bucket (FORMAT.md, "Object
//! store"). Every key of a store is under `PREFIX/stores/STORE_ID/`: the
//! store id is random per store, so two hosts writing to one bucket never
//! name a pack alike.

use crate::error::{Error, Result};

/// `s3://BUCKET/PREFIX` as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Without leading or trailing slashes; may be empty.
    pub prefix: String,
}

impl std::str::FromStr for S3Url {
    type Err = Error;
    fn from_str(text: &str) -> Result<S3Url> {
        let bad =
            |why: &str| Error::Invalid(format!("{text:?} is not s3://BUCKET[/PREFIX]: {why}"));
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it must start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|part| part == "." || part == "..")
            || prefix.contains("//")
            || prefix.contains('\\')
        {
            return Err(bad("the prefix has an empty, . or .. part"));
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// The keys of one store in its bucket.
#[derive(Clone, Debug)]
pub struct StoreKeys {
    /// `PREFIX/stores/STORE_ID` (no trailing slash).
    root: String,
}

impl StoreKeys {
    pub fn new(prefix: &str, store_id: &str) -> StoreKeys {
        StoreKeys {
            root: join(&stores_folder(prefix), store_id),
        }
    }

    /// The store's settings object.
    pub fn store_object(&self) -> String {
        join(&self.root, "store.json")
    }

    pub fn packs_folder(&self) -> String {
        join(&self.root, "packs")
    }

    pub fn pack(&self, id: u64) -> String {
        join(&self.packs_folder(), &format!("{id:016x}.pack"))
    }

    pub fn pack_index(&self, id: u64) -> String {
        join(&self.packs_folder(), &format!("{id:016x}.index"))
    }

    pub fn snapshots_folder(&self) -> String {
        join(&self.root, "snapshots")
    }

    pub fn manifest(&self, id: u64) -> String {
        join(&self.snapshots_folder(), &format!("{id:016x}.json"))
    }
}

/// `PREFIX/stores`: one folder per store id.
pub fn stores_folder(prefix: &str) -> String {
    join(prefix, "stores")
}

fn join(folder: &str, name: &str) -> String {
    if folder.is_empty() {
        name.to_string()
    } else {
        format!("{folder}/{name}")
    }
}

/// What a key in a store's packs or snapshots folder names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Named {
    Pack(u64),
    PackIndex(u64),
    Manifest(u64),
}

/// Parses the last part of a key (`%016x.pack`, `.index`, `.json`).
pub fn parse_name(key: &str) -> Option<Named> {
    let name = key.rsplit('/').next()?;
    let (hex, kind) = name.split_once('.')?;
    if hex.len() != 16 {
        return None;
    }
    let id = u64::from_str_radix(hex, 16).ok()?;
    match kind {
        "pack" => Some(Named::Pack(id)),
        "index" => Some(Named::PackIndex(id)),
        "json" => Some(Named::Manifest(id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_print() {
        let url: S3Url = "s3://b/some/prefix/".parse().unwrap();
        assert_eq!(url.bucket, "b");
        assert_eq!(url.prefix, "some/prefix");
        assert_eq!(url.to_string(), "s3://b/some/prefix");
        let bare: S3Url = "s3://b".parse().unwrap();
        assert_eq!(bare.prefix, "");
        assert!("http://b/x".parse::<S3Url>().is_err());
        assert!("s3:///x".parse::<S3Url>().is_err());
        assert!("s3://b/a/../x".parse::<S3Url>().is_err());
    }

    #[test]
    fn keys_round_trip() {
        let keys = StoreKeys::new("p", "00ff");
        assert_eq!(keys.pack(42), "p/stores/00ff/packs/000000000000002a.pack");
        assert_eq!(parse_name(&keys.pack(42)), Some(Named::Pack(42)));
        assert_eq!(parse_name(&keys.pack_index(7)), Some(Named::PackIndex(7)));
        assert_eq!(parse_name(&keys.manifest(9)), Some(Named::Manifest(9)));
        assert_eq!(
            StoreKeys::new("", "x").store_object(),
            "stores/x/store.json"
        );
        assert_eq!(parse_name("p/stores/x/packs/2a.pack"), None);
    }
}
