//! A scratch database beside DATABASE_URL's, and the service binary started on it, for the
//! commands that measure the service at sizes the seeded database does not have.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use sqlx::{Connection, PgConnection};

/// A scratch database beside DATABASE_URL's; [`Scratch::drop_now`] drops it.
pub(crate) struct Scratch {
    admin_url: String,
    name: String,
    pub(crate) url: String,
}

impl Scratch {
    pub(crate) async fn create(database_url: &str, purpose: &str) -> anyhow::Result<Scratch> {
        let (base, _) = database_url.rsplit_once('/').context("DATABASE_URL has no database name")?;
        let admin_url = format!("{base}/postgres");
        let name = format!("loadgen_{purpose}_{}", std::process::id());
        let mut admin = PgConnection::connect(&admin_url).await.context("connect to the server's postgres database")?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut admin)
            .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await?;
        Ok(Scratch { url: format!("{base}/{name}"), admin_url, name })
    }

    pub(crate) async fn drop_now(self) {
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
                .execute(&mut admin)
                .await;
        }
    }
}

/// The service process, its address and its JSON log lines.
pub(crate) struct Service {
    child: Child,
    pub(crate) addr: SocketAddr,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Service {
    /// Starts `bin serve` on `url` on a free loopback port, with `env` added.
    pub(crate) fn start(
        bin: &PathBuf,
        url: &str,
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut child = Command::new(bin)
            .arg("serve")
            .env("DATABASE_URL", url)
            .env("HTTP_ADDR", addr.to_string())
            .env("DATA_DIR", data_dir)
            .env("COUPON__LOG__FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stderr = child.stderr.take().context("piped stderr")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        std::thread::spawn({
            let lines = lines.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(value) = serde_json::from_str(&line) {
                        lines.lock().expect("log lines").push(value);
                    }
                }
            }
        });
        Ok(Service { child, addr, lines })
    }

    /// The first log line with this message.
    pub(crate) fn log(&self, message: &str) -> Option<serde_json::Value> {
        self.lines.lock().expect("log lines").iter().find(|l| l["message"] == message).cloned()
    }

    /// SIGTERM, and waits for the exit.
    pub(crate) fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}
