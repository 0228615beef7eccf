//! The order in which connections are evicted and expired, kept so that both cost O(1) per
//! connection instead of a scan of the whole table.
//!
//! Two queues of connection keys: open connections by last activity (a segment moves its
//! connection to the back) and closed ones by the time they closed (they are kept until idle only
//! to recognise late retransmissions). Eviction takes the front of the closed queue, else the front
//! of the open one; the idle sweep walks each queue from its front and stops at the first
//! connection still active. Each queue is a doubly linked list threaded through a slab, so a move is
//! a few index writes and no allocation once the slab has grown to the table's size.
use super::ConnKey;

/// Which queue a connection is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Queue {
    Open,
    Closed,
}

impl Queue {
    fn index(self) -> usize {
        match self {
            Queue::Open => 0,
            Queue::Closed => 1,
        }
    }
}

/// A connection's place in [`Order`], kept by the connection.
pub(super) type Slot = usize;

const NONE: usize = usize::MAX;

#[derive(Clone, Copy, Debug)]
struct Node {
    key: Option<ConnKey>,
    prev: usize,
    next: usize,
    queue: Queue,
}

/// Open connections by last activity, closed ones by closing time; see the module documentation.
#[derive(Debug, Default)]
pub(super) struct Order {
    nodes: Vec<Node>,
    free: Vec<Slot>,
    /// `(front, back)` of each queue.
    ends: [(usize, usize); 2],
}

impl Order {
    pub(super) fn new() -> Self {
        Self { nodes: Vec::new(), free: Vec::new(), ends: [(NONE, NONE); 2] }
    }

    /// Puts `key` at the back of `queue`; returns its slot.
    pub(super) fn push(&mut self, key: ConnKey, queue: Queue) -> Slot {
        let node = Node { key: Some(key), prev: NONE, next: NONE, queue };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.nodes[slot] = node;
                slot
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.link_back(slot, queue);
        slot
    }

    /// Moves `slot` to the back of `queue` (its own queue: it was just active).
    pub(super) fn move_back(&mut self, slot: Slot, queue: Queue) {
        let node = self.nodes[slot];
        if node.queue == queue && node.next == NONE {
            return; // Already last: the common case of a busy connection.
        }
        self.unlink(slot);
        self.nodes[slot].queue = queue;
        self.link_back(slot, queue);
    }

    /// Forgets `slot`.
    pub(super) fn remove(&mut self, slot: Slot) {
        self.unlink(slot);
        self.nodes[slot].key = None;
        self.free.push(slot);
    }

    /// The connection at the front of `queue`: the least recently active open one, or the
    /// earliest closed one.
    pub(super) fn front(&self, queue: Queue) -> Option<ConnKey> {
        let front = self.ends[queue.index()].0;
        (front != NONE).then(|| self.nodes[front].key).flatten()
    }

    /// The connection after `slot` in its queue.
    #[cfg(test)]
    fn next(&self, slot: Slot) -> Option<ConnKey> {
        let next = self.nodes[slot].next;
        (next != NONE).then(|| self.nodes[next].key).flatten()
    }

    fn link_back(&mut self, slot: Slot, queue: Queue) {
        let (front, back) = self.ends[queue.index()];
        self.nodes[slot].prev = back;
        self.nodes[slot].next = NONE;
        if back == NONE {
            self.ends[queue.index()] = (slot, slot);
        } else {
            self.nodes[back].next = slot;
            self.ends[queue.index()] = (front, slot);
        }
    }

    fn unlink(&mut self, slot: Slot) {
        let Node { prev, next, queue, .. } = self.nodes[slot];
        let ends = &mut self.ends[queue.index()];
        if prev == NONE {
            ends.0 = next;
        } else {
            self.nodes[prev].next = next;
        }
        if next == NONE {
            ends.1 = prev;
        } else {
            self.nodes[next].prev = prev;
        }
        self.nodes[slot].prev = NONE;
        self.nodes[slot].next = NONE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> ConnKey {
        ConnKey {
            client: std::net::SocketAddr::from(([10, 0, 0, 1], port)),
            server: "10.0.0.2:8080".parse().unwrap(),
        }
    }

    fn drain(order: &Order, queue: Queue, slots: &std::collections::HashMap<ConnKey, Slot>) -> Vec<u16> {
        let mut out = Vec::new();
        let mut at = order.front(queue);
        while let Some(k) = at {
            out.push(k.client.port());
            at = order.next(slots[&k]);
        }
        out
    }

    #[test]
    fn queues_keep_activity_order_and_reuse_slots() {
        let mut order = Order::new();
        let mut slots = std::collections::HashMap::new();
        for port in 1..=4 {
            slots.insert(key(port), order.push(key(port), Queue::Open));
        }
        assert_eq!(drain(&order, Queue::Open, &slots), [1, 2, 3, 4]);
        order.move_back(slots[&key(1)], Queue::Open);
        order.move_back(slots[&key(3)], Queue::Open);
        assert_eq!(drain(&order, Queue::Open, &slots), [2, 4, 1, 3]);
        order.move_back(slots[&key(4)], Queue::Closed);
        order.move_back(slots[&key(2)], Queue::Closed);
        assert_eq!(drain(&order, Queue::Open, &slots), [1, 3]);
        assert_eq!(drain(&order, Queue::Closed, &slots), [4, 2]);
        order.remove(slots.remove(&key(4)).unwrap());
        order.remove(slots.remove(&key(3)).unwrap());
        assert_eq!(drain(&order, Queue::Closed, &slots), [2]);
        assert_eq!(drain(&order, Queue::Open, &slots), [1]);
        let reused = order.push(key(9), Queue::Open);
        assert!(reused < 4, "a freed slot is reused");
        slots.insert(key(9), reused);
        assert_eq!(drain(&order, Queue::Open, &slots), [1, 9]);
        order.remove(slots.remove(&key(1)).unwrap());
        order.remove(slots.remove(&key(9)).unwrap());
        order.remove(slots.remove(&key(2)).unwrap());
        assert_eq!(order.front(Queue::Open), None);
        assert_eq!(order.front(Queue::Closed), None);
    }
}
