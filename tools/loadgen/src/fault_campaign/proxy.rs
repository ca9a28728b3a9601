//! A TCP proxy between one instance and PostgreSQL that the nemesis can cut (every connection
//! closed, new ones refused), stall (connections open, no byte moves) or slow (each chunk
//! delayed), and heal.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the link does to the bytes that cross it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    Up,
    Cut,
    Stalled,
    Slow(Duration),
}

/// One instance's link to PostgreSQL.
pub(crate) struct Link {
    pub(crate) addr: SocketAddr,
    state: watch::Sender<LinkState>,
}

impl Link {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> anyhow::Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (state, _) = watch::channel(LinkState::Up);
        let states = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *states.borrow() == LinkState::Cut {
                    continue;
                }
                let states = states.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    // Either direction ending (or a cut) ends both: the halves drop together.
                    tokio::select! {
                        () = pump(client_read, server_write, states.clone()) => {}
                        () = pump(server_read, client_write, states) => {}
                    }
                });
            }
        });
        Ok(Link { addr, state })
    }

    pub(crate) fn set(&self, to: LinkState) {
        self.state.send_replace(to);
    }
}

/// Copies bytes one way until either side closes or the link is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<LinkState>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = state.changed() => {
                if changed.is_err() || *state.borrow() == LinkState::Cut {
                    return;
                }
                continue;
            }
        };
        // Hold the chunk while stalled; drop the connection if cut meanwhile.
        loop {
            let now = *state.borrow_and_update();
            match now {
                LinkState::Cut => return,
                LinkState::Stalled => {
                    if state.changed().await.is_err() {
                        return;
                    }
                }
                LinkState::Slow(delay) => {
                    tokio::time::sleep(delay).await;
                    break;
                }
                LinkState::Up => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
