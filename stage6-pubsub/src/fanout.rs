//! The lesson's one flag: how an instance hears about what happened on
//! the others.

use serde::Serialize;

/// `--fanout local|room-sticky|pubsub|streams`
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fanout {
    /// Each instance delivers only to its own sockets. With three
    /// instances a page sees about a third of the updates: the stateful
    /// break.
    Local,
    /// As local, but the balancer sends every socket of a room to one
    /// instance (`hash-param` on `?room=`): a room's members meet, until
    /// that instance dies; and one busy room loads one instance.
    RoomSticky,
    /// Instances publish to Redis channels and each holds one subscription
    /// per watched topic. At most once: what is published while an
    /// instance is away (or its page reconnecting) is gone.
    Pubsub,
    /// Redis Streams: every update has an id, and a page that comes back
    /// sends the last id it saw and catches up first. Nothing is missed
    /// (within the stream's length).
    Streams,
}

impl Fanout {
    /// The name, as the flag and the scripts write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::RoomSticky => "room-sticky",
            Self::Pubsub => "pubsub",
            Self::Streams => "streams",
        }
    }

    /// Whether updates travel through Redis to every instance (else each
    /// instance delivers to its own sockets only).
    pub fn through_redis(self) -> bool {
        matches!(self, Self::Pubsub | Self::Streams)
    }
}

/// `--pubsub-channel per-topic|shared`: which Redis channels carry the
/// updates in `pubsub` mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PubsubChannel {
    /// One channel per topic: an instance hears only about the topics its
    /// sockets watch (Redis delivers an update to the instances that
    /// watch it, and no others).
    #[default]
    PerTopic,
    /// One channel for everything, as classic socket.io's Redis adapter
    /// does: every instance hears every update and throws away what none
    /// of its sockets watch. Simpler; Redis deliveries grow with the
    /// number of instances, whoever watches.
    Shared,
}
