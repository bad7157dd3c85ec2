//! The caps on WebSocket connections: per node, and per client address.
//!
//! A permit is taken before the upgrade and held by the connection's task; dropping it gives
//! the place back. Refusals happen before the upgrade, as `503` with a reason, so a stock
//! client backs off and tries again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts open sockets against the caps. Cheap to clone.
#[derive(Clone)]
pub struct SocketCaps {
    inner: Arc<Inner>,
}

struct Inner {
    max_total: usize,
    max_per_address: usize,
    /// Open sockets in all, and per address (only addresses with at least one). A std mutex:
    /// it is held for a map update, never across an `.await`.
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Why a socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The node serves as many sockets as it may.
    Node,
    /// This client address holds as many sockets as it may.
    Address,
}

impl Full {
    /// The metric reason.
    pub fn reason(self) -> &'static str {
        match self {
            Full::Node => "node_connections",
            Full::Address => "address_connections",
        }
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Full::Node => "this server holds as many connections as it may; try again later",
            Full::Address => "too many connections from your address; close some and try again",
        }
    }
}

impl SocketCaps {
    /// Caps of `max_total` sockets, and `max_per_address` for one client address.
    pub fn new(max_total: usize, max_per_address: usize) -> Self {
        SocketCaps { inner: Arc::new(Inner { max_total, max_per_address, counts: Mutex::new(Counts::default()) }) }
    }

    /// Takes a place for a socket from `address`, or says which cap is reached.
    pub fn acquire(&self, address: IpAddr) -> Result<SocketPermit, Full> {
        let mut counts = self.inner.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.inner.max_total {
            return Err(Full::Node);
        }
        let mine = counts.per_address.entry(address).or_default();
        if *mine >= self.inner.max_per_address {
            if *mine == 0 {
                counts.per_address.remove(&address);
            }
            return Err(Full::Address);
        }
        *mine += 1;
        counts.total += 1;
        Ok(SocketPermit { caps: self.clone(), address })
    }

    /// Sockets open now.
    pub fn open(&self) -> usize {
        self.inner.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// A place taken by one socket; given back on drop.
pub struct SocketPermit {
    caps: SocketCaps,
    address: IpAddr,
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        let mut counts = self.caps.inner.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(mine) = counts.per_address.get_mut(&self.address) {
            *mine -= 1;
            if *mine == 0 {
                counts.per_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cap_refuses_past_its_count_and_permits_give_places_back() {
        let caps = SocketCaps::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = caps.acquire(a).unwrap();
        let _a2 = caps.acquire(a).unwrap();
        assert_eq!(caps.acquire(a).err(), Some(Full::Address));
        let _b1 = caps.acquire(b).unwrap();
        assert_eq!(caps.acquire(b).err(), Some(Full::Node));
        drop(a1);
        assert_eq!(caps.open(), 2);
        assert!(caps.acquire(b).is_ok());
    }
}
