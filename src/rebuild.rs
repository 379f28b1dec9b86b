//! `init --from`: a new local store that takes over a store kept in a
//! bucket, from the bucket alone. It reads the store's settings object,
//! imports every pack its index object describes (store::import), then
//! every snapshot manifest whose map and chunks all landed in the imported
//! packs; a manifest that reaches a chunk no pack holds is reported and
//! left out. Ids handed out afterwards stay above every id in the bucket.

use std::collections::HashSet;
use std::path::Path;

use crate::catalog::manifest::decode_manifest;
use crate::error::{Error, Result};
use crate::map::MapReader;
use crate::store::backend::s3::keys::{self, S3Url, StoreKeys};
use crate::store::backend::s3::{Bucket, S3Config};
use crate::store::backend::PacksConfig;
use crate::store::import::{import_packs, ImportReport};
use crate::store::{OpenOptions, Placement, StoreSettings, OBJECT_FORMAT_VERSION};
use crate::Repository;

#[derive(Debug, Default, serde::Serialize)]
pub struct RebuildReport {
    pub store_id: String,
    pub packs: ImportReport,
    pub snapshots: u64,
    /// Manifests not imported, and why (one line each).
    pub skipped_snapshots: Vec<String>,
}

/// Makes the store at `root` from the store in `url`.
pub fn rebuild(root: &Path, url: &S3Url, cache_bytes: u64) -> Result<(Repository, RebuildReport)> {
    let (store_id, settings) = find_store(url)?;
    let options = OpenOptions {
        create: Some(settings.config),
        ..OpenOptions::default()
    };
    let placement = Placement {
        packs: PacksConfig::S3(S3Config {
            bucket: url.bucket.clone(),
            prefix: url.prefix.clone(),
            store_id: store_id.clone(),
            cache_bytes,
        }),
        adopt: true,
    };
    if root.join("FORMAT").exists() {
        return Err(Error::StoreExists(root.to_path_buf()));
    }
    let repo = Repository::open_placed(root, &options, &placement)?;
    let mut report = RebuildReport {
        store_id,
        packs: import_packs(repo.store())?,
        ..RebuildReport::default()
    };
    let Some(sidecar) = repo.store().sidecar() else {
        return Err(Error::Invalid("the new store has no bucket".into()));
    };
    let mut max_id = report.packs.max_pack_id;
    let mut ids = sidecar.manifests()?;
    ids.sort_unstable();
    for id in ids {
        max_id = max_id.max(id);
        let name = sidecar.manifest_name(id);
        let manifest = match sidecar.manifest(id).and_then(|b| decode_manifest(&b)) {
            Ok(manifest) if manifest.snapshot.id == id => manifest,
            Ok(_) => {
                report
                    .skipped_snapshots
                    .push(format!("{name}: names another snapshot id"));
                continue;
            }
            Err(e) => {
                report.skipped_snapshots.push(format!("{name}: {e}"));
                continue;
            }
        };
        let snapshot = &manifest.snapshot;
        if let Err(why) = check_reachable(&repo, &manifest.snapshot.map) {
            report.skipped_snapshots.push(format!(
                "snapshot {} of disk {} ({name}): {why}; not imported",
                snapshot.name, snapshot.disk
            ));
            continue;
        }
        if repo
            .catalog()
            .snapshot(&snapshot.disk, &snapshot.name)
            .is_ok()
        {
            report.skipped_snapshots.push(format!(
                "{name}: disk {} already has a snapshot named {}",
                snapshot.disk, snapshot.name
            ));
            continue;
        }
        repo.catalog().import_snapshot(&manifest)?;
        report.snapshots += 1;
    }
    repo.store().raise_id_floor(max_id + 1)?;
    Ok((repo, report))
}

/// The one store under `url`, and its settings.
fn find_store(url: &S3Url) -> Result<(String, StoreSettings)> {
    let bucket = Bucket::connect(&url.bucket)?;
    let ids = bucket.folders(&keys::stores_folder(&url.prefix))?;
    let store_id = match ids.as_slice() {
        [one] => one.clone(),
        [] => return Err(Error::Invalid(format!("{url} holds no snapfs store"))),
        many => {
            return Err(Error::Invalid(format!(
                "{url} holds {} stores ({}); snapfs takes over one store per prefix",
                many.len(),
                many.join(", ")
            )))
        }
    };
    let key = StoreKeys::new(&url.prefix, &store_id).store_object();
    let bytes = bucket.get(&key)?;
    let settings: StoreSettings = serde_json::from_slice(&bytes)
        .map_err(|e| Error::BadMetadata(format!("{}: {e}", bucket.url(&key))))?;
    if settings.format != OBJECT_FORMAT_VERSION || settings.store_id != store_id {
        return Err(Error::BadMetadata(format!(
            "{}: object format {} of store {} (this snapfs reads format {OBJECT_FORMAT_VERSION})",
            bucket.url(&key),
            settings.format,
            settings.store_id
        )));
    }
    settings.config.validate()?;
    Ok((store_id, settings))
}

/// Fails unless every page and chunk of the map is in the imported index.
fn check_reachable(repo: &Repository, map: &crate::map::MapRoot) -> Result<(), String> {
    let store = repo.store();
    let missing = std::cell::Cell::new(None);
    let mut pages = HashSet::new();
    let walked = MapReader::new(store, *map).walk(
        &mut |page| {
            if missing.get().is_none() && !store.contains(page).unwrap_or(false) {
                missing.set(Some(*page));
            }
            pages.insert(*page)
        },
        &mut |_, hash| {
            if missing.get().is_none() && !hash.is_zero() && !store.contains(hash)? {
                missing.set(Some(*hash));
            }
            Ok(())
        },
    );
    if let Some(hash) = missing.get() {
        return Err(format!("chunk {hash} is in no pack of the bucket"));
    }
    walked.map_err(|e| format!("its map is unreadable: {e}"))
}
