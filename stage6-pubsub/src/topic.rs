//! What a page can watch, and where each instance hears about it.
//!
//! A *topic* is one stream of updates: the stock (and flash price) of one
//! SKU (`stock:TEE-RED-M`), or one live-shopping room (`room:tees`). Every
//! update on a topic carries `{epoch, seq}` (Centrifugo's recovery model):
//! `seq` counts the topic's updates, one by one, in Redis; `epoch` names the
//! counting itself (a fresh Redis that lost its counters starts a new
//! epoch). A page that sees a `seq` jump, or a new epoch, knows it missed
//! something and asks for a snapshot.

use std::fmt;

/// Every Redis name stage 6 uses starts with this.
pub(crate) const PREFIX: &str = "myclothes:live:";

/// The shop's live-shopping rooms, one per garment line: the page offers
/// these, and no other room can be joined. A room is a stream in Redis
/// (up to a thousand messages kept) and a field of its counters; were any
/// name a page made up a room, one script could fill the Redis that keeps
/// every cart with rooms nobody reads.
pub const ROOMS: [&str; 9] = [
    "tees", "polos", "oxfords", "hoodies", "knits", "chinos", "jeans", "jackets", "socks",
];

/// One stream of updates.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// A SKU's stock level and flash price: latest-value state, which a
    /// snapshot heals.
    Stock(String),
    /// A room's messages and presence: events, which only a replay heals.
    Room(String),
}

impl Topic {
    /// `stock:TEE-RED-M` or `room:tees` (one of [`ROOMS`]), as pages and
    /// Redis name it.
    pub fn parse(text: &str) -> Option<Self> {
        let (kind, name) = text.split_once(':')?;
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        match (kind, valid) {
            ("stock", true) => Some(Self::Stock(name.to_owned())),
            ("room", true) if ROOMS.contains(&name) => Some(Self::Room(name.to_owned())),
            _ => None,
        }
    }

    /// The pub/sub channel, and the stream key, that carry this topic.
    pub fn channel(&self) -> String {
        format!("{PREFIX}{self}")
    }

    /// The topic a channel (or stream key) carries.
    pub fn of_channel(channel: &str) -> Option<Self> {
        Self::parse(channel.strip_prefix(PREFIX)?)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stock(sku) => write!(f, "stock:{sku}"),
            Self::Room(room) => write!(f, "room:{room}"),
        }
    }
}

/// A stream entry's id (`1700000000000-3`), compared as Redis does.
pub(crate) fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_read_and_write_the_same_and_refuse_odd_names() {
        for text in ["stock:TEE-RED-M", "room:tees"] {
            let topic = Topic::parse(text).expect("a topic");
            assert_eq!(topic.to_string(), text);
            assert_eq!(Topic::of_channel(&topic.channel()), Some(topic));
        }
        for odd in [
            "stock:",
            "room:a b",
            "price:TEE",
            "stock",
            "room:a*",
            "room:made-up",
        ] {
            assert_eq!(Topic::parse(odd), None, "{odd}");
        }
        assert!(stream_id("5-2") > stream_id("5-1"));
        assert!(stream_id("10-0") > stream_id("9-99"));
    }
}
