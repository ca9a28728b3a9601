//! Test harness: a fresh database per test, the real service on an ephemeral port, a client.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use coupon_engine::app::App;
use coupon_engine::config::Settings;
use coupon_engine::db::MIGRATOR;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The server every test database lives on: `DATABASE_URL`, as tools/test exports it.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL must point at a PostgreSQL superuser; run tools/test")
}

/// A database of its own for one test, migrated, dropped when the test passes.
pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
    name: String,
}

impl TestDb {
    /// Creates and migrates a uniquely named database.
    pub async fn new() -> TestDb {
        let name = format!("ce_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&server_url()).await.expect("connect to DATABASE_URL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        let url = with_database(&server_url(), &name);
        let pool = PgPoolOptions::new().max_connections(10).connect(&url).await.expect("connect to test database");
        MIGRATOR.run(&pool).await.expect("migrate test database");
        TestDb { url, pool, name }
    }
}

/// A test's database drops itself when the test ends; a failed test leaves it to look at.
impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test database {} kept for a look", self.name);
            return;
        }
        let name = self.name.clone();
        // Its own thread and runtime: a drop cannot await, and the test's runtime may be
        // single-threaded or already shutting down.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&server_url()).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await;
                }
            });
        });
        let _ = dropped.join();
    }
}

/// `url` with its database name replaced.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let slash = base.rfind('/').expect("a database URL has a path");
    let mut out = format!("{}/{name}", &base[..slash]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Settings for a test instance: the test database, port 0, `data_dir`.
pub fn settings(db_url: &str, data_dir: &Path, extra: &[(&str, &str)]) -> Settings {
    let mut vars = vec![
        ("DATABASE_URL".to_owned(), db_url.to_owned()),
        ("HTTP_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ("DATA_DIR".to_owned(), data_dir.display().to_string()),
        ("COUPON__VALIDATION_LOG__FLUSH_INTERVAL".to_owned(), "20ms".to_owned()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Settings::load_from(None, vars).expect("test settings are valid")
}

/// Settings under which an instance sees PostgreSQL go within a fraction of a second and
/// retries its validation-log writes often: for tests that cut the database off.
pub const QUICK_OUTAGES: [(&str, &str); 3] = [
    ("COUPON__DATABASE__HEALTH_INTERVAL", "100ms"),
    ("COUPON__DATABASE__CONNECT_TIMEOUT", "500ms"),
    ("COUPON__VALIDATION_LOG__RETRY_MAX", "200ms"),
];

/// A directory of the test's own, removed when dropped.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().expect("create a temporary directory")
}

/// A filesystem of its own for a test (a tmpfs of a few MiB), to fill up; unmounted when
/// dropped. Mounting needs root, or a mount namespace of the test's own
/// ([`rerun_where_it_may_mount`]).
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(mib: u32) -> SmallDisk {
        let dir = temp_dir("coupon-engine-small-disk-");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a {mib} MiB tmpfs at {} needs root (CAP_SYS_ADMIN)", dir.path().display());
        SmallDisk { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk with the file `name` until `leave` bytes are free (0: every byte).
    pub fn fill(&self, name: &str, leave: u64) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(self.path().join(name)).unwrap();
        let mut left = self.free().saturating_sub(leave);
        while left > 0 {
            let chunk = vec![0u8; left.min(1 << 20) as usize];
            if file.write_all(&chunk).is_err() {
                break;
            }
            left -= chunk.len() as u64;
        }
        let _ = file.sync_all();
    }

    /// Free bytes on it now.
    pub fn free(&self) -> u64 {
        let out = Command::new("df").args(["--output=avail", "-B1"]).arg(self.path()).output().expect("run df");
        String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df's answer")
    }
}

/// When this process may not mount a filesystem (no root, or a container without the
/// capability), runs the test `path` (`module::name`) again inside a user and mount namespace
/// of its own (`unshare`), where it may, and says so: the caller returns at once. When it may
/// mount, or inside that namespace, returns false and the test goes on.
pub fn rerun_where_it_may_mount(path: &str) -> bool {
    const INSIDE: &str = "COUPON_TEST_OWN_MOUNT_NAMESPACE";
    if std::env::var_os(INSIDE).is_some() {
        return false;
    }
    let probe = temp_dir("coupon-engine-mount-probe-");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(probe.path())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if mounted {
        let _ = Command::new("umount").arg(probe.path()).status();
        return false;
    }
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "--"])
        .arg(std::env::current_exe().expect("the test binary"))
        .args(["--exact", path, "--nocapture", "--test-threads", "1"])
        .env(INSIDE, "1")
        .output()
        .expect("run unshare (util-linux): without root the test mounts its filesystem in a namespace of its own");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{path} in its own mount namespace:\n{stdout}\n{stderr}"
    );
    true
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// The service running in this process.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: TestClient,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), coupon_engine::app::StartError>>,
    owned_dir: Option<tempfile::TempDir>,
}

impl TestApp {
    /// Starts the service on `db` and waits until it is ready.
    pub async fn spawn(db: &TestDb) -> TestApp {
        TestApp::spawn_with(&db.url, &[]).await
    }

    /// Starts the service on the database at `db_url` with extra settings (by environment
    /// name) and waits until it is ready.
    pub async fn spawn_with(db_url: &str, extra: &[(&str, &str)]) -> TestApp {
        let data_dir = temp_dir("coupon-engine-test-");
        let mut app = TestApp::spawn_on(data_dir.path(), db_url, extra).await;
        app.owned_dir = Some(data_dir);
        app
    }

    /// Starts the service with its `DATA_DIR` at `data_dir`, which the caller keeps.
    pub async fn spawn_on(data_dir: &Path, db_url: &str, extra: &[(&str, &str)]) -> TestApp {
        let app = App::build(settings(db_url, data_dir, extra)).await.expect("build app");
        let addr = app.local_addr();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        let client = TestClient::new(addr);
        client.wait_ready().await;
        TestApp { addr, client, shutdown: Some(tx), handle, owned_dir: None }
    }

    /// Waits until the service stops by itself (within `within`), and returns what `run`
    /// returned.
    pub async fn stopped_by_itself(self, within: Duration) -> Result<(), coupon_engine::app::StartError> {
        // The shutdown sender stays alive while waiting: dropping it would stop the service.
        let TestApp { handle, shutdown, .. } = self;
        let result = tokio::time::timeout(within, handle).await.expect("the service stopped by itself");
        drop(shutdown);
        result.expect("app task panicked")
    }

    /// Shuts down as SIGTERM would, and returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), coupon_engine::app::StartError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.await.expect("app task panicked")
    }
}

/// A small HTTP/1.1 client for one service address.
#[derive(Clone)]
pub struct TestClient {
    addr: SocketAddr,
    inner: Client<HttpConnector, Full<Bytes>>,
}

/// A response, with its body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub text: String,
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

/// The body of a redeem or a hold of an order of 100.00.
pub fn redeem_body(code: &str, user: &str, order: &str) -> Value {
    serde_json::json!({"code": code, "userId": user, "orderId": order, "orderValue": 100})
}

impl TestClient {
    pub fn new(addr: SocketAddr) -> TestClient {
        TestClient { addr, inner: Client::builder(TokioExecutor::new()).build_http() }
    }

    /// `POST /api/coupons/redeem` for 100.00: the status and the answer.
    pub async fn redeem(&self, code: &str, user: &str, order: &str) -> (StatusCode, Value) {
        let answer = self.post("/api/coupons/redeem", &redeem_body(code, user, order)).await;
        (answer.status, answer.json())
    }

    /// `POST /api/coupons/hold` for 100.00, for `ttl` seconds or the default.
    pub async fn hold(&self, code: &str, user: &str, order: &str, ttl: Option<u64>) -> (StatusCode, Value) {
        let mut body = redeem_body(code, user, order);
        if let Some(ttl) = ttl {
            body["ttlSeconds"] = serde_json::json!(ttl);
        }
        let answer = self.post("/api/coupons/hold", &body).await;
        (answer.status, answer.json())
    }

    /// `POST /api/coupons/release` of an order.
    pub async fn release(&self, code: &str, order: &str) -> (StatusCode, Value) {
        let answer = self.post("/api/coupons/release", &serde_json::json!({"code": code, "orderId": order})).await;
        (answer.status, answer.json())
    }

    pub async fn request(&self, method: Method, path: &str, body: impl Into<Bytes>) -> TestResponse {
        self.request_with(method, path, body, &[]).await
    }

    pub async fn request_with(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> TestResponse {
        let body = body.into();
        let mut builder = Request::builder().method(method).uri(format!("http://{}{path}", self.addr));
        // A JSON body says so, unless the test says otherwise.
        if !body.is_empty() && !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
            builder = builder.header("content-type", "application/json");
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let req = builder.body(Full::new(body)).expect("valid request");
        let response = self.inner.request(req).await.expect("request succeeds");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.expect("read body").to_bytes();
        TestResponse { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.request(Method::GET, path, Bytes::new()).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> TestResponse {
        self.request(Method::POST, path, serde_json::to_vec(body).expect("serialise")).await
    }

    /// The value of the `/metrics` sample whose name and labels are exactly `series` (0 if
    /// it has none yet).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").await.text;
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
    }

    /// `POST /api/coupons/validate`, expecting 200; returns the body.
    pub async fn validate(&self, body: Value) -> Value {
        let response = self.post("/api/coupons/validate", &body).await;
        assert_eq!(response.status, StatusCode::OK, "{body}: {}", response.text);
        response.json()
    }

    /// Polls `/health/ready` until it answers 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Ok(response)) = tokio::time::timeout(
                Duration::from_secs(1),
                self.inner.get(format!("http://{}/health/ready", self.addr).parse().expect("uri")),
            )
            .await
                && response.status() == StatusCode::OK
            {
                return;
            }
            assert!(Instant::now() < deadline, "service at {} never became ready", self.addr);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends raw bytes on a fresh connection and returns what comes back before the server
/// closes it or `timeout` passes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits for `check` to hold, polling; panics with `what` after `within`.
/// Waits until every instance decides by sharing (an instance that started alone has handed
/// over to the others, API.md §6).
pub async fn all_sharing(clients: &[&TestClient]) {
    for client in clients {
        eventually(Duration::from_secs(10), "every instance sharing", || async {
            client.get("/health").await.json()["decides"] == "sharing"
        })
        .await;
    }
}

pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Inserts users with these ids.
pub async fn insert_users(pool: &PgPool, ids: &[&str]) {
    sqlx::query("INSERT INTO users (id) SELECT unnest($1::text[])").bind(ids).execute(pool).await.expect("users");
}

/// Inserts a coupon from `code` and `columns` (SQL expressions by column), returning its id.
pub async fn insert_coupon(pool: &PgPool, code: &str, columns: &[(&str, &str)]) -> i64 {
    let mut names = vec!["code", "type", "discount_type", "discount_value"];
    let mut values = vec![format!("'{code}'"), "'time_specific'".into(), "'percentage'".into(), "10".into()];
    for (name, value) in columns {
        if let Some(idx) = names.iter().position(|n| n == name) {
            values[idx] = (*value).to_owned();
        } else {
            names.push(name);
            values.push((*value).to_owned());
        }
    }
    let sql = format!("INSERT INTO coupons ({}) VALUES ({}) RETURNING id", names.join(", "), values.join(", "));
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await.expect("insert coupon")
}

/// Inserts a live redemption.
pub async fn insert_usage(pool: &PgPool, coupon_id: i64, user_id: &str, order_id: &str) {
    sqlx::query("INSERT INTO coupon_usage (coupon_id, user_id, order_id, order_value, discount_applied) VALUES ($1, $2, $3, 100, 10)")
        .bind(coupon_id)
        .bind(user_id)
        .bind(order_id)
        .execute(pool)
        .await
        .expect("insert usage");
}

/// The `coupon-engine` binary, as a child process with piped output.
pub fn binary(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_coupon-engine"));
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.env_remove("RUST_LOG").env("COUPON__LOG__FORMAT", "json");
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// A `coupon-engine serve` child process, the address it announced and its log lines.
pub struct ServeProcess {
    pub child: Child,
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    _data_dir: tempfile::TempDir,
}

impl ServeProcess {
    /// Starts `serve` on port 0 against `db_url` and waits for its "listening" log line.
    pub fn start(db_url: &str, env: &[(&str, &str)]) -> ServeProcess {
        let temp = temp_dir("coupon-engine-serve-");
        let data_dir = temp.path().display().to_string();
        let mut all_env = vec![("DATABASE_URL", db_url), ("HTTP_ADDR", "127.0.0.1:0"), ("DATA_DIR", &data_dir)];
        all_env.extend_from_slice(env);
        let mut child = binary(&["serve"], &all_env).spawn().expect("spawn coupon-engine serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        std::thread::spawn({
            let lines = lines.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    lines.lock().expect("log lines").push(line);
                }
            }
        });
        let mut process = ServeProcess { child, addr: SocketAddr::from(([0, 0, 0, 0], 0)), lines, _data_dir: temp };
        let listening = process.wait_for_log("listening", Duration::from_secs(20));
        process.addr = listening["addr"].as_str().and_then(|a| a.parse().ok()).expect("addr in the listening line");
        process
    }

    /// Waits for a JSON log line whose message contains `needle` and returns it.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let found = self.lines.lock().expect("log lines").iter().find_map(|line| {
                let value: Value = serde_json::from_str(line).ok()?;
                value["message"].as_str()?.contains(needle).then_some(value)
            });
            if let Some(value) = found {
                return value;
            }
            let seen = self.lines.lock().expect("log lines").clone();
            assert!(Instant::now() < deadline, "no log line with {needle:?}; saw {seen:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every log line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.lines.lock().expect("log lines").clone()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        signal(&self.child, "TERM");
        self.child.wait().expect("wait for coupon-engine")
    }
}

/// Sends a signal to a child with the `kill` command (no unsafe code needed).
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().expect("run kill");
    assert!(status.success(), "kill -{name} failed");
}

/// A TCP proxy in front of PostgreSQL that a test can cut and restore, to simulate an
/// outage for one service instance without touching the shared server.
pub struct PgProxy {
    pub url: String,
    state: Arc<Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    up: bool,
    /// New connections are accepted and never answered: a database that hangs.
    stalled: bool,
    connections: Vec<tokio::task::JoinHandle<()>>,
}

impl PgProxy {
    /// Starts a proxy to the server behind `db_url` and returns it with a URL through it.
    pub async fn start(db_url: &str) -> PgProxy {
        let (prefix, rest) = db_url.split_once('@').expect("DATABASE_URL has user@host:port");
        let (upstream, path) = rest.split_once('/').expect("DATABASE_URL has a path");
        let upstream = upstream.to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("{prefix}@{}/{path}", listener.local_addr().expect("proxy addr"));
        let state = Arc::new(Mutex::new(ProxyState { up: true, stalled: false, connections: Vec::new() }));
        tokio::spawn({
            let state = state.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !state.lock().expect("proxy state").up {
                        drop(inbound);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let stalled = state.lock().expect("proxy state").stalled;
                    let task = tokio::spawn(async move {
                        if stalled {
                            // Held open, never answered, until the test restores the proxy.
                            let _held = &inbound;
                            std::future::pending::<()>().await;
                        }
                        if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    state.lock().expect("proxy state").connections.push(task);
                }
            }
        });
        PgProxy { url, state }
    }

    /// Drops every open connection and refuses new ones.
    pub async fn cut(&self) {
        self.switch(|state| state.up = false).await;
    }

    /// Drops every open connection and holds new ones without ever answering.
    pub async fn stall(&self) {
        self.switch(|state| state.stalled = true).await;
    }

    /// Accepts and forwards connections again.
    pub async fn restore(&self) {
        self.switch(|state| {
            state.up = true;
            state.stalled = false;
        })
        .await;
    }

    /// Changes what new connections meet and closes the open ones, returning once they are
    /// closed: a query sent after it never reaches the database through an old connection.
    async fn switch(&self, change: impl FnOnce(&mut ProxyState)) {
        let open = {
            let mut state = self.state.lock().expect("proxy state");
            change(&mut state);
            std::mem::take(&mut state.connections)
        };
        for connection in open {
            connection.abort();
            let _ = connection.await;
        }
    }
}

/// A PostgreSQL cluster of a test's own, started and stopped through `tools/pg`, for drills
/// that take the database away.
pub struct PrivateCluster {
    /// Readable by the `postgres` user `tools/pg` runs the server as.
    _home: tempfile::TempDir,
    dir: PathBuf,
    port: u16,
    pub url: String,
}

impl PrivateCluster {
    /// Creates and starts a cluster on a free port, with the schema migrated.
    pub async fn start() -> PrivateCluster {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let home = tempfile::Builder::new()
            .prefix("coupon-engine-pg-")
            .permissions(std::fs::Permissions::from_mode(0o755))
            .tempdir()
            .expect("create a temporary directory");
        let cluster = PrivateCluster {
            dir: home.path().join("pg"),
            _home: home,
            port,
            url: format!("postgres://postgres@127.0.0.1:{port}/coupon_engine"),
        };
        cluster.pg("start");
        let pool = PgPoolOptions::new().max_connections(2).connect(&cluster.url).await.expect("connect to cluster");
        MIGRATOR.run(&pool).await.expect("migrate cluster");
        pool.close().await;
        cluster
    }

    /// `tools/pg stop` (fast shutdown: connections are cut).
    pub fn stop(&self) {
        self.pg("stop");
    }

    /// `tools/pg start`.
    pub fn restart(&self) {
        self.pg("start");
    }

    fn pg(&self, verb: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/pg");
        let status = Command::new(script)
            .arg(verb)
            .env("PG_CLUSTER_DIR", &self.dir)
            .env("PGPORT_PRIVATE", self.port.to_string())
            .stdout(Stdio::null())
            .status()
            .expect("run tools/pg");
        assert!(status.success(), "tools/pg {verb} failed");
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.pg("stop");
    }
}
