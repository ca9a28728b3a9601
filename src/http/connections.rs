//! The connections the server holds (API.md §8): at most `http.max_connections_per_address`
//! from one address (an IPv6 address by its /64; trusted proxies and
//! `http.connection_cap_exempt` exempt), and when every place is taken, the connection that
//! has waited longest without a request in flight is closed to make room for a new one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

/// What the server knows of one open connection's requests.
#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: AtomicU32,
    /// When it opened or its last request ended, in ms since the server started.
    last: AtomicU64,
    /// Whether it holds a place and is being served (a connection waiting for a place is
    /// never the one closed to make room).
    serving: AtomicBool,
    epoch: Instant,
}

impl Activity {
    /// A request began.
    pub(crate) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request ended.
    pub(crate) fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    /// Whether no request is in flight on it.
    pub(crate) fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }

    /// It holds a place now.
    pub(crate) fn serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }

    fn touch(&self) {
        self.last.store(u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Open {
    address: Option<u128>,
    activity: Arc<Activity>,
    close: Option<oneshot::Sender<()>>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    open: HashMap<u64, Open>,
    per_address: HashMap<u128, usize>,
}

/// Every open connection.
#[derive(Debug)]
pub(crate) struct Connections {
    /// Most connections from one address; 0: no cap.
    per_address: usize,
    exempt: Vec<IpAddr>,
    epoch: Instant,
    inner: Mutex<Inner>,
}

/// A connection's place among the open ones; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct Registration {
    id: u64,
    connections: Arc<Connections>,
    pub activity: Arc<Activity>,
    /// Fires when the server wants this connection closed for a newer one.
    pub closing: oneshot::Receiver<()>,
}

impl Connections {
    pub(crate) fn new(per_address: usize, exempt: Vec<IpAddr>) -> Arc<Connections> {
        Arc::new(Connections { per_address, exempt, epoch: Instant::now(), inner: Mutex::default() })
    }

    /// A place for a connection from `peer`, unless its address holds its cap already.
    pub(crate) fn register(self: &Arc<Self>, peer: IpAddr) -> Option<Registration> {
        let address = (self.per_address > 0 && !self.exempt.contains(&peer)).then(|| address_key(peer));
        let mut inner = self.inner.lock().expect("connections");
        if let Some(address) = address {
            let count = inner.per_address.entry(address).or_default();
            if *count >= self.per_address {
                return None;
            }
            *count += 1;
        }
        let activity = Arc::new(Activity {
            in_flight: AtomicU32::new(0),
            last: AtomicU64::new(0),
            serving: AtomicBool::new(false),
            epoch: self.epoch,
        });
        activity.touch();
        let (close, closing) = oneshot::channel();
        inner.next += 1;
        let id = inner.next;
        inner.open.insert(id, Open { address, activity: Arc::clone(&activity), close: Some(close) });
        Some(Registration { id, connections: Arc::clone(self), activity, closing })
    }

    /// Asks the connection that has waited longest with no request in flight to close;
    /// false if every one is busy.
    pub(crate) fn close_idlest(&self) -> bool {
        let mut inner = self.inner.lock().expect("connections");
        let idlest = inner
            .open
            .iter_mut()
            .filter(|(_, open)| {
                open.close.is_some() && open.activity.serving.load(Ordering::Relaxed) && open.activity.idle()
            })
            .min_by_key(|(id, open)| (open.activity.last.load(Ordering::Relaxed), **id));
        match idlest.and_then(|(_, open)| open.close.take()) {
            Some(close) => close.send(()).is_ok(),
            None => false,
        }
    }

    /// Open connections.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.inner.lock().expect("connections").open.len()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.connections.inner.lock().expect("connections");
        if let Some(Open { address: Some(address), .. }) = inner.open.remove(&self.id)
            && let Some(count) = inner.per_address.get_mut(&address)
        {
            *count -= 1;
            if *count == 0 {
                inner.per_address.remove(&address);
            }
        }
    }
}

/// An address as the caps count it: an IPv4 address (mapped ones too) alone, an IPv6 address
/// by its /64 (one host may have all of it).
pub(crate) fn address_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => (u128::from(v6) >> 64) << 64 | (1 << 63),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_holds_its_cap_and_no_more() {
        let connections = Connections::new(2, vec![ip("10.0.0.9")]);
        let first = connections.register(ip("192.0.2.1")).expect("a place");
        let _second = connections.register(ip("192.0.2.1")).expect("a place");
        assert!(connections.register(ip("192.0.2.1")).is_none(), "the third from one address");
        assert!(connections.register(ip("192.0.2.2")).is_some(), "another address");
        // An IPv6 host is its /64.
        let _v6 = connections.register(ip("2001:db8::1")).unwrap();
        let _v6b = connections.register(ip("2001:db8::ffff")).unwrap();
        assert!(connections.register(ip("2001:db8::2")).is_none());
        // Exempt addresses are never capped; a place given back may be taken again.
        assert!((0..5).all(|_| connections.register(ip("10.0.0.9")).is_some()));
        drop(first);
        assert!(connections.register(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn the_idlest_connection_is_closed_first_and_never_a_busy_one() {
        let connections = Connections::new(0, Vec::new());
        let mut oldest = connections.register(ip("192.0.2.1")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let mut busy = connections.register(ip("192.0.2.2")).unwrap();
        busy.activity.begin();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let mut newer = connections.register(ip("192.0.2.3")).unwrap();
        let waiting = connections.register(ip("192.0.2.4")).unwrap();
        for serving in [&oldest, &busy, &newer] {
            serving.activity.serving();
        }
        assert!(connections.close_idlest());
        assert!(oldest.closing.try_recv().is_ok(), "the longest idle goes first");
        assert!(busy.closing.try_recv().is_err());
        assert!(connections.close_idlest());
        assert!(newer.closing.try_recv().is_ok());
        assert!(!connections.close_idlest(), "a connection with a request in flight is never closed");
        busy.activity.end();
        assert!(connections.close_idlest());
        assert!(!connections.close_idlest(), "one waiting for a place is never closed for another");
        assert_eq!(connections.open(), 4);
        drop((oldest, busy, newer, waiting));
        assert_eq!(connections.open(), 0);
    }
}
