//! The connections the server holds (API.md §8): at most `http.max_connections_per_address`
//! from one address (an IPv6 address by its /64; trusted proxies and
//! `http.connection_cap_exempt` exempt). When every place is taken, or every place of one
//! address, a new connection takes the place of the one that has waited longest without a
//! request in flight, else of the one whose request body has been arriving longest (a slow
//! body, over a second); never of one whose request is being answered.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

/// A body still arriving after this long is slow: its connection may make room for others.
const SLOW_BODY_MS: u64 = 1_000;

/// What the server knows of one open connection's requests.
#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: AtomicU32,
    /// When it opened or its last request ended, in ms since the server started.
    last: AtomicU64,
    /// Whether it holds a place and is being served (a connection waiting for a place is
    /// never the one closed to make room).
    serving: AtomicBool,
    /// Whether it has answered a request: a client's kept-alive connection, which makes room
    /// only after every connection that never sent one (closing it races the client's next
    /// request).
    answered: AtomicBool,
    /// When its request's body began arriving, in ms since the server started, plus one; 0
    /// while no body is arriving.
    arriving_since: AtomicU64,
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
        self.answered.store(true, Ordering::Relaxed);
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

    /// Whether a request's body is still arriving on it.
    pub(crate) fn arriving(&self) -> bool {
        self.arriving_since.load(Ordering::Relaxed) != 0
    }

    fn now(&self) -> u64 {
        ms_since(self.epoch)
    }

    fn touch(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    /// How it may make room for a new connection, if it may: idle ones that never sent a
    /// request, then idle ones that did, the longest idle first; then a slow body, the one
    /// arriving longest first.
    fn room_rank(&self, now: u64) -> Option<(u8, u64)> {
        if !self.serving.load(Ordering::Relaxed) {
            return None;
        }
        if self.idle() {
            let answered = u8::from(self.answered.load(Ordering::Relaxed));
            return Some((answered, self.last.load(Ordering::Relaxed)));
        }
        match self.arriving_since.load(Ordering::Relaxed) {
            0 => None,
            since if now + 1 >= since + SLOW_BODY_MS => Some((2, since)),
            _ => None,
        }
    }
}

/// A request's body, telling its connection's [`Activity`] while it is still arriving.
pub(crate) struct Arriving<B> {
    inner: B,
    activity: Arc<Activity>,
}

impl<B: Body> Arriving<B> {
    pub(crate) fn new(inner: B, activity: Arc<Activity>) -> Arriving<B> {
        if !inner.is_end_stream() {
            activity.arriving_since.store(activity.now() + 1, Ordering::Relaxed);
        }
        Arriving { inner, activity }
    }
}

impl<B> Arriving<B> {
    fn arrived(&self) {
        self.activity.arriving_since.store(0, Ordering::Relaxed);
    }
}

impl<B: Body + Unpin> Body for Arriving<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) || self.inner.is_end_stream() {
            self.arrived();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Arriving<B> {
    fn drop(&mut self) {
        self.arrived();
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

    /// A place for a connection from `peer`. When its address holds its cap already, one of
    /// the address's own connections that may make room is asked to close for it; if none
    /// may, there is no place.
    pub(crate) fn register(self: &Arc<Self>, peer: IpAddr) -> Option<Registration> {
        let address = (self.per_address > 0 && !self.exempt.contains(&peer)).then(|| address_key(peer));
        let mut inner = self.inner.lock().expect("connections");
        if let Some(address) = address {
            let count = inner.per_address.get(&address).copied().unwrap_or(0);
            if count >= self.per_address && !self.make_room(&mut inner, Some(address)) {
                return None;
            }
            *inner.per_address.entry(address).or_default() += 1;
        }
        let activity = Arc::new(Activity {
            in_flight: AtomicU32::new(0),
            last: AtomicU64::new(0),
            serving: AtomicBool::new(false),
            answered: AtomicBool::new(false),
            arriving_since: AtomicU64::new(0),
            epoch: self.epoch,
        });
        activity.touch();
        let (close, closing) = oneshot::channel();
        inner.next += 1;
        let id = inner.next;
        inner.open.insert(id, Open { address, activity: Arc::clone(&activity), close: Some(close) });
        Some(Registration { id, connections: Arc::clone(self), activity, closing })
    }

    /// Asks a connection to close to make room for a new one: the longest idle, else the
    /// slowest body; false if every one is busy being answered.
    pub(crate) fn close_for_room(&self) -> bool {
        let mut inner = self.inner.lock().expect("connections");
        self.make_room(&mut inner, None)
    }

    /// Asks the connection (of `address`, or any) that may best make room to close.
    fn make_room(&self, inner: &mut Inner, address: Option<u128>) -> bool {
        let now = ms_since(self.epoch);
        let chosen = inner
            .open
            .iter_mut()
            .filter(|(_, open)| open.close.is_some() && address.is_none_or(|a| open.address == Some(a)))
            .filter_map(|(id, open)| open.activity.room_rank(now).map(|rank| (rank, *id, open)))
            .min_by_key(|(rank, id, _)| (*rank, *id));
        match chosen.and_then(|(_, _, open)| open.close.take()) {
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

/// Milliseconds from `epoch` to now, at most `u64::MAX - 1` (a body's start is kept plus one).
fn ms_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
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

    /// Connections whose clock began a minute ago, so that a body can have been arriving a while.
    fn connections(per_address: usize, exempt: Vec<IpAddr>) -> Arc<Connections> {
        let epoch = Instant::now().checked_sub(std::time::Duration::from_secs(60)).unwrap();
        Arc::new(Connections { per_address, exempt, epoch, inner: Mutex::default() })
    }

    #[test]
    fn an_address_past_its_cap_replaces_its_own_idlest_or_gets_no_place() {
        let connections = connections(2, vec![ip("10.0.0.9")]);
        let mut first = connections.register(ip("192.0.2.1")).expect("a place");
        let mut second = connections.register(ip("192.0.2.1")).expect("a place");
        first.activity.serving();
        second.activity.serving();
        first.activity.begin();
        second.activity.begin();
        assert!(connections.register(ip("192.0.2.1")).is_none(), "the third while both are answered");
        assert!(connections.register(ip("192.0.2.2")).is_some(), "another address");
        // One idle: it makes room for the newcomer from its own address.
        second.activity.end();
        let _third = connections.register(ip("192.0.2.1")).expect("in the idle one's place");
        assert!(second.closing.try_recv().is_ok() && first.closing.try_recv().is_err());
        // An IPv6 host is its /64.
        let mut v6 = connections.register(ip("2001:db8::1")).unwrap();
        let mut v6b = connections.register(ip("2001:db8::ffff")).unwrap();
        for open in [&mut v6, &mut v6b] {
            open.activity.serving();
            open.activity.begin();
        }
        assert!(connections.register(ip("2001:db8::2")).is_none());
        // Exempt addresses are never capped; a place given back may be taken again.
        assert!((0..5).all(|_| connections.register(ip("10.0.0.9")).is_some()));
        drop(v6);
        assert!(connections.register(ip("2001:db8::2")).is_some());
    }

    #[test]
    fn the_idlest_makes_room_first_then_the_slowest_body_and_never_one_being_answered() {
        let connections = connections(0, Vec::new());
        let mut oldest = connections.register(ip("192.0.2.1")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let mut busy = connections.register(ip("192.0.2.2")).unwrap();
        busy.activity.begin();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let mut newer = connections.register(ip("192.0.2.3")).unwrap();
        let mut slow = connections.register(ip("192.0.2.5")).unwrap();
        let mut prompt = connections.register(ip("192.0.2.6")).unwrap();
        let waiting = connections.register(ip("192.0.2.4")).unwrap();
        for serving in [&oldest, &busy, &newer, &slow, &prompt] {
            serving.activity.serving();
        }
        // A body arriving for two seconds, and one that has just begun.
        slow.activity.begin();
        let now = slow.activity.now();
        slow.activity.arriving_since.store(now - 2_000 + 1, Ordering::Relaxed);
        prompt.activity.begin();
        prompt.activity.arriving_since.store(now + 1, Ordering::Relaxed);
        assert!(connections.close_for_room());
        assert!(oldest.closing.try_recv().is_ok(), "the longest idle goes first");
        assert!(busy.closing.try_recv().is_err());
        assert!(connections.close_for_room());
        assert!(newer.closing.try_recv().is_ok());
        assert!(connections.close_for_room());
        assert!(slow.closing.try_recv().is_ok(), "then the slow body");
        assert!(!connections.close_for_room(), "a request being answered, or a body just begun, is never closed");
        assert!(prompt.closing.try_recv().is_err());
        busy.activity.end();
        assert!(connections.close_for_room());
        assert!(busy.closing.try_recv().is_ok());
        assert!(!connections.close_for_room(), "one waiting for a place is never closed for another");
        assert_eq!(connections.open(), 6);
        drop((oldest, busy, newer, slow, prompt, waiting));
        assert_eq!(connections.open(), 0);
    }

    #[test]
    fn a_client_kept_alive_makes_room_after_sockets_that_never_asked_anything() {
        let connections = connections(0, Vec::new());
        let mut client = connections.register(ip("192.0.2.1")).unwrap();
        client.activity.serving();
        client.activity.begin();
        client.activity.end();
        let mut silent = connections.register(ip("192.0.2.2")).unwrap();
        silent.activity.serving();
        assert!(connections.close_for_room());
        assert!(silent.closing.try_recv().is_ok(), "the silent socket goes first, though newer");
        assert!(connections.close_for_room());
        assert!(client.closing.try_recv().is_ok());
    }

    #[tokio::test]
    async fn a_body_is_arriving_until_its_end() {
        use http_body_util::{BodyExt, Full, StreamBody};
        let connections = connections(0, Vec::new());
        let open = connections.register(ip("192.0.2.1")).unwrap();
        let empty = Arriving::new(Full::new(bytes::Bytes::new()), Arc::clone(&open.activity));
        assert!(!open.activity.arriving(), "an empty body never arrives");
        drop(empty);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<bytes::Bytes>, std::convert::Infallible>>(1);
        let stream = StreamBody::new(tokio_stream_of(rx));
        let mut body = Arriving::new(stream, Arc::clone(&open.activity));
        assert!(open.activity.arriving());
        tx.send(Ok(Frame::data(bytes::Bytes::from_static(b"{")))).await.unwrap();
        assert!(body.frame().await.is_some());
        assert!(open.activity.arriving(), "a part is not the whole");
        drop(tx);
        assert!(body.frame().await.is_none());
        assert!(!open.activity.arriving(), "arrived");
    }

    /// A stream of what `rx` receives.
    fn tokio_stream_of<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
