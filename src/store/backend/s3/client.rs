//! The bucket, behind blocking calls: one small tokio runtime owned here
//! drives `object_store`'s async client, and our threads (FUSE workers,
//! the snapshot pipeline) wait on it with `block_on`. Endpoint and
//! credentials come from the AWS environment variables; requests are
//! retried with a bounded backoff, so a server that is down answers an
//! error within about [`RETRY_TIMEOUT`] plus one request's timeout.

use std::future::Future;
use std::io::{self, Read};
use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};

use crate::error::{Error, Result};

/// Bytes up to which a pack goes up in one PUT; bigger ones in parts.
const SINGLE_PUT_MAX: u64 = 16 << 20;
/// Size of one part of a multipart upload (S3 wants at least 5 MiB).
const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once during an upload.
const PARTS_IN_FLIGHT: usize = 4;
/// How long a request keeps being retried (backoff 100 ms doubling to 2 s).
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_RETRIES: usize = 6;
/// One request, body included (a part of 8 MiB on a slow link fits).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An object as listed: key and size.
#[derive(Clone, Debug)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

pub struct Bucket {
    runtime: tokio::runtime::Runtime,
    client: Arc<dyn ObjectStore>,
    name: String,
    traffic: Traffic,
}

/// Requests made and bytes moved, for the log and the benchmark (retries
/// inside the client are not counted separately).
#[derive(Default)]
pub struct Traffic {
    pub requests: AtomicU64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

impl Traffic {
    fn count(&self, requests: u64, sent: u64, received: u64) {
        self.requests.fetch_add(requests, Ordering::Relaxed);
        self.sent.fetch_add(sent, Ordering::Relaxed);
        self.received.fetch_add(received, Ordering::Relaxed);
    }
}

impl Drop for Bucket {
    fn drop(&mut self) {
        let t = &self.traffic;
        log::info!(
            "object store s3://{}: {} requests, {} bytes sent, {} bytes received",
            self.name,
            t.requests.load(Ordering::Relaxed),
            t.sent.load(Ordering::Relaxed),
            t.received.load(Ordering::Relaxed)
        );
    }
}

impl Bucket {
    /// A client of `bucket` with the AWS environment's endpoint, region and
    /// credentials, and what the environment leaves out from the profile
    /// in `~/.aws/config` and `~/.aws/credentials`. Talks to nobody yet.
    pub fn connect(bucket: &str) -> Result<Bucket> {
        let profile = super::profile::Profile::from_files();
        let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .ok()
            .or(profile.endpoint_url.clone());
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: MAX_RETRIES,
            retry_timeout: RETRY_TIMEOUT,
        };
        let options = ClientOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_allow_http(
                endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://")),
            );
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry)
            .with_client_options(options);
        if let Some(endpoint) = &endpoint {
            // A custom endpoint (a LAN server, loopback) rarely resolves
            // BUCKET.host names: address the bucket in the path.
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            builder = builder.with_region(profile.region.as_deref().unwrap_or("us-east-1"));
        }
        // Keys in the environment win; else the profile's, if it has both.
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            if let (Some(id), Some(secret)) = (&profile.access_key_id, &profile.secret_access_key) {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
                if let Some(token) = &profile.session_token {
                    builder = builder.with_token(token);
                }
            }
        }
        let client = builder
            .build()
            .map_err(|e| invalid(format!("bucket {bucket}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("snapfs-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Io {
                context: "starting the object store client".into(),
                source: e,
            })?;
        Ok(Bucket {
            runtime,
            client: Arc::new(client),
            name: bucket.to_string(),
            traffic: Traffic::default(),
        })
    }

    /// `s3://BUCKET/KEY`, for messages.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.name)
    }

    /// Runs `future` to its end on our runtime. Never from inside a
    /// runtime thread: that would deadlock (tokio panics instead).
    fn wait<T>(&self, what: &str, future: impl Future<Output = T>) -> Result<T> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(invalid(format!(
                "{what}: called from inside an async runtime (a bug)"
            )));
        }
        Ok(self.runtime.block_on(future))
    }

    /// Writes `bytes` at `key` unless an object is there already (then an
    /// `AlreadyExists` kind).
    pub fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        let what = format!("writing {}", self.url(key));
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        self.traffic.count(1, bytes.len() as u64, 0);
        let location = Path::from(key);
        let put = self
            .client
            .put_opts(&location, PutPayload::from(bytes), options);
        self.wait(&what, put)?.map_err(|e| failed(what, e))?;
        Ok(())
    }

    /// Uploads the file at `path` to `key` and returns once the server
    /// confirmed it. A multipart upload that fails is aborted: no object
    /// appears at `key` unless the whole file arrived.
    pub fn upload_file(&self, key: &str, path: &FsPath) -> Result<()> {
        let what = format!("uploading {} to {}", path.display(), self.url(key));
        let local = |e: io::Error| Error::Io {
            context: what.clone(),
            source: e,
        };
        let mut file = std::fs::File::open(path).map_err(local)?;
        let len = file.metadata().map_err(local)?.len();
        if len <= SINGLE_PUT_MAX {
            let mut bytes = Vec::with_capacity(len as usize);
            file.read_to_end(&mut bytes).map_err(local)?;
            return self.put_new(key, bytes);
        }
        // Start, parts, completion.
        let parts = len.div_ceil(PART_SIZE as u64);
        self.traffic.count(parts + 2, len, 0);
        let location = Path::from(key);
        let upload = async {
            let upload = self.client.put_multipart(&location).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = vec![0u8; PART_SIZE];
            loop {
                // A local read inside the future: this thread is ours, not
                // one of the runtime's.
                let n = match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = writer.abort().await;
                        return Err(object_store::Error::Generic {
                            store: "local file",
                            source: Box::new(e),
                        });
                    }
                };
                if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    let _ = writer.abort().await;
                    return Err(e);
                }
                writer.write(&buf[..n]);
            }
            writer.finish().await
        };
        self.wait(&what, upload)?.map_err(|e| failed(what, e))?;
        Ok(())
    }

    /// Bytes `range` of the object at `key`; short of them (the object is
    /// shorter) is an `UnexpectedEof` kind.
    pub fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let what = format!("reading {} at {}", self.url(key), range.start);
        let want = range.end - range.start;
        let location = Path::from(key);
        self.traffic.count(1, 0, want);
        let get = self.client.get_range(&location, range);
        let bytes = self
            .wait(&what, get)?
            .map_err(|e| failed(what.clone(), e))?;
        if bytes.len() as u64 != want {
            return Err(Error::Io {
                context: what,
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("got {} of {want} bytes", bytes.len()),
                ),
            });
        }
        Ok(bytes.to_vec())
    }

    /// `get_range` on the runtime, without waiting: `done` gets the bytes
    /// (on a blocking thread of the runtime, so that it may write files).
    pub fn get_range_in_background(
        &self,
        key: &str,
        range: Range<u64>,
        done: impl FnOnce(Result<Vec<u8>>) + Send + 'static,
    ) {
        let client = self.client.clone();
        let what = format!("reading {} at {}", self.url(key), range.start);
        let location = Path::from(key);
        let want = range.end - range.start;
        self.traffic.count(1, 0, want);
        self.runtime.spawn(async move {
            let fetched = match client.get_range(&location, range).await {
                Ok(bytes) if bytes.len() as u64 == want => Ok(bytes.to_vec()),
                Ok(bytes) => Err(Error::Io {
                    context: what,
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("got {} of {want} bytes", bytes.len()),
                    ),
                }),
                Err(e) => Err(failed(what, e)),
            };
            let _ = tokio::task::spawn_blocking(move || done(fetched)).await;
        });
    }

    /// The whole object at `key`.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let what = format!("reading {}", self.url(key));
        let get = async {
            let result = self.client.get(&Path::from(key)).await?;
            result.bytes().await
        };
        let bytes = self.wait(&what, get)?.map_err(|e| failed(what, e))?;
        self.traffic.count(1, 0, bytes.len() as u64);
        Ok(bytes.to_vec())
    }

    /// The size of the object at `key` (`NotFound` kind when absent).
    pub fn size(&self, key: &str) -> Result<u64> {
        let what = format!("looking up {}", self.url(key));
        let location = Path::from(key);
        let head = self.client.head(&location);
        self.traffic.count(1, 0, 0);
        let meta = self.wait(&what, head)?.map_err(|e| failed(what, e))?;
        Ok(meta.size)
    }

    /// Every object under `folder/`.
    pub fn list(&self, folder: &str) -> Result<Vec<Listed>> {
        let what = format!("listing {}/", self.url(folder));
        let prefix = Path::from(folder);
        let list = self.client.list(Some(&prefix)).try_collect::<Vec<_>>();
        let found = self.wait(&what, list)?.map_err(|e| failed(what, e))?;
        // One request per page of 1000 keys.
        self.traffic.count(found.len() as u64 / 1000 + 1, 0, 0);
        Ok(found
            .into_iter()
            .map(|meta| Listed {
                key: meta.location.to_string(),
                size: meta.size,
                modified: meta.last_modified.into(),
            })
            .collect())
    }

    /// The names of the folders right under `folder/`.
    pub fn folders(&self, folder: &str) -> Result<Vec<String>> {
        let what = format!("listing {}/", self.url(folder));
        let prefix = Path::from(folder);
        self.traffic.count(1, 0, 0);
        let list = self.client.list_with_delimiter(Some(&prefix));
        let found = self.wait(&what, list)?.map_err(|e| failed(what, e))?;
        Ok(found
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// Removes the object at `key`; one already gone is fine.
    pub fn delete(&self, key: &str) -> Result<()> {
        let what = format!("removing {}", self.url(key));
        let location = Path::from(key);
        self.traffic.count(1, 0, 0);
        let delete = self.client.delete(&location);
        match self.wait(&what, delete)? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(failed(what, e)),
        }
    }
}

fn invalid(text: String) -> Error {
    Error::Invalid(text)
}

/// An object store error as our `Io` error, its kind telling absence and
/// presence apart from other failures.
fn failed(context: String, error: object_store::Error) -> Error {
    let kind = match &error {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            io::ErrorKind::AlreadyExists
        }
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    Error::Io {
        context,
        source: io::Error::new(kind, one_line(&error)),
    }
}

/// The error and its causes on one line, short: the server's S3 error
/// code and message when it sent one (not its XML), else the client's.
fn one_line(error: &object_store::Error) -> String {
    let mut line = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(next) = cause {
        let text = next.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = next.source();
    }
    let line = line.replace('\n', " ");
    let retries = between(&line, "after ", " retries").map(|n| format!(" (after {n} retries)"));
    let retries = retries.unwrap_or_default();
    if let Some(code) = between(&line, "<Code>", "</Code>") {
        let message = between(&line, "<Message>", "</Message>").unwrap_or("");
        let meaning = match code {
            "NoSuchBucket" => "the bucket does not exist",
            "SignatureDoesNotMatch"
            | "InvalidAccessKeyId"
            | "AccessDenied"
            | "InvalidToken"
            | "ExpiredToken" => "the server refused the credentials",
            "SlowDown" | "ServiceUnavailable" | "InternalError" => {
                "the server is overloaded or failing"
            }
            _ => "the server refused the request",
        };
        return format!("{meaning} ({code}: {message}){retries}");
    }
    if let Some(at) = line.find("error sending request") {
        return format!("cannot reach the server: {}{retries}", &line[at..]);
    }
    line
}

/// The text between `start` and the next `end` in `text`.
fn between<'t>(text: &'t str, start: &str, end: &str) -> Option<&'t str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}
