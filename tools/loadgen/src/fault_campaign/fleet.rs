//! The processes under test: the instances (each reaching PostgreSQL through its own
//! [`Link`]), HAProxy in front of them, and the private PostgreSQL cluster that `tools/pg`
//! runs (restarted with `-m immediate` by the nemesis).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::proxy::{Link, LinkState};
use crate::client::ServiceClient;

pub(crate) const ADMIN_TOKEN: &str = "fault-campaign-admin-token";

/// Runs `tools/NAME ARGS` beside this checkout (with this process's environment, so that
/// `PG_CLUSTER_DIR` and `PGPORT_PRIVATE` name the campaign's own cluster).
pub(crate) fn tool(name: &str, args: &[&str]) -> anyhow::Result<()> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../");
    let status = Command::new(format!("{script}{name}"))
        .args(args)
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("run tools/{name}"))?;
    if !status.success() {
        bail!("tools/{name} {args:?} failed");
    }
    Ok(())
}

/// One instance: its process (when running), its port and its link.
pub(crate) struct Instance {
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) link: Link,
    pub(crate) client: ServiceClient,
    dir: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Instance {
    pub(crate) fn new(i: usize, dir: &Path, link: Link) -> anyhow::Result<Instance> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let name = format!("node-{}", i + 1);
        let dir = dir.join(&name);
        std::fs::create_dir_all(&dir)?;
        let client = ServiceClient::new(&format!("http://127.0.0.1:{port}"));
        Ok(Instance { name, port, link, client, dir, child: None, paused: false })
    }

    /// Starts the process and waits (at most `within`) until it is ready; a start that fails
    /// (PostgreSQL unreachable at start-up makes `serve` exit) leaves it down.
    pub(crate) async fn start(&mut self, bin: &Path, database: &str, within: Duration) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("serve.log"))?;
        let url = format!("postgres://postgres@{}/{database}", self.link.addr);
        let child = Command::new(bin)
            .arg("serve")
            .env("DATABASE_URL", url)
            .env("HTTP_ADDR", format!("127.0.0.1:{}", self.port))
            .env("DATA_DIR", &self.dir)
            .env("INSTANCE_ID", &self.name)
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            // The campaign checks limits, not abuse protection: its many 404s and holds per
            // user must not turn into 429s.
            .env("COUPON__PROTECTION__FAILED_LOOKUPS_PER_USER", "0")
            .env("COUPON__PROTECTION__MAX_ACTIVE_HOLDS_PER_USER", "1000")
            .env("COUPON__PROTECTION__HOLD_SHARE_PERCENT", "0")
            .env("COUPON__DATABASE__CONNECT_TIMEOUT", "2s")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        self.child = Some(child);
        self.paused = false;
        let deadline = Instant::now() + within;
        loop {
            if self.client.get_text("/health/ready").await.is_ok_and(|t| t.contains("\"ready\":true")) {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                bail!("{} exited at start-up ({status})", self.name);
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("{} not ready within {within:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: memory gone, the journal kept up to its last fsync.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGTERM, and waits for the exit (leases go back).
    pub(crate) fn stop(&mut self) {
        self.resume();
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let _ = child.wait();
        }
    }

    pub(crate) fn pause(&mut self) {
        if let Some(child) = &self.child {
            signal(child, "STOP");
            self.paused = true;
        }
    }

    pub(crate) fn resume(&mut self) {
        if let Some(child) = &self.child
            && self.paused
        {
            signal(child, "CONT");
        }
        self.paused = false;
    }

    pub(crate) fn heal_link(&self) {
        self.link.set(LinkState::Up);
    }

    /// Journal records not yet confirmed in PostgreSQL, from `/metrics`.
    pub(crate) async fn backlog(&self) -> Option<f64> {
        self.client.metric("journal_backlog_records").await.ok()
    }
}

fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status();
}

/// HAProxy, round-robin without affinity over the instances, skipping any whose
/// `/health/ready` fails.
pub(crate) struct Balancer {
    pub(crate) port: u16,
    child: Child,
}

impl Balancer {
    pub(crate) fn start(dir: &Path, instances: &[Instance]) -> anyhow::Result<Balancer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut config = format!(
            "global\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  \
             timeout server 10s\n  option http-keep-alive\nfrontend api\n  bind 127.0.0.1:{port}\n  \
             default_backend instances\nbackend instances\n  balance roundrobin\n  \
             option httpchk GET /health/ready\n"
        );
        for instance in instances {
            config.push_str(&format!(
                "  server {} 127.0.0.1:{} check inter 500ms fall 2 rise 1\n",
                instance.name, instance.port
            ));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config)?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start haproxy (tools/campaign installs it)")?;
        Ok(Balancer { port, child })
    }

    pub(crate) fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
