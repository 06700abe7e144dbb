//! What a stage is, as far as the shared launcher is concerned.
//!
//! A stage crate implements [`Stage`]: its name and lesson ([`StageInfo`]),
//! its own command-line flags, how to build its cart store, and its demo.
//! Everything else (the HTTP surface, `up`, `serve`, the balancer, the test
//! topology) is the same for every stage and lives in this crate.

use std::any::Any;
use std::error::Error as StdError;
use std::ffi::OsString;
use std::future::Future;

use crate::store::CartStore;

/// An error a stage hook may return; shown to the user as one line.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// How a stage introduces itself on the banner and the shop page.
#[derive(Debug)]
pub struct StageInfo {
    /// The package name, which is also the binary: `stage1`.
    pub package: &'static str,
    /// A short title: `Stage 1 · Local state`.
    pub title: &'static str,
    /// The lesson, in one line.
    pub lesson: &'static str,
    /// Things to try, printed under the banner. `{url}` is replaced by the
    /// balancer's URL.
    pub try_this: &'static [&'static str],
    /// The balancing policy `up` uses for this stage.
    pub policy: lb::Policy,
    /// Whether the balancer pins shoppers to instances (stage 2).
    pub sticky: bool,
}

/// One evolution step of the shop.
pub trait Stage: Send + Sync + 'static {
    /// The stage's name, lesson and balancer setup.
    const INFO: &'static StageInfo;

    /// The stage's own command-line flags (accepted by `up`, `serve` and
    /// `demo`). Stages with none use [`NoArgs`].
    type Args: clap::Args + Clone + std::fmt::Debug + Send + Sync + 'static;

    /// Where this stage keeps the cart.
    type Store: CartStore;

    /// Starts what the stage needs and was not given (a private
    /// `redis-server` when `REDIS_URL` is unset), and records in `args`
    /// where to find it. `up`, `serve` and `demo` call this first; what it
    /// starts runs as long as the returned [`Services`] lives.
    fn services(_args: &mut Self::Args) -> impl Future<Output = Result<Services, BoxError>> + Send {
        async { Ok(Services::default()) }
    }

    /// Builds this instance's cart store (in `serve` mode).
    fn store(args: &Self::Args) -> impl Future<Output = Result<Self::Store, BoxError>> + Send;

    /// Environment variables `up` gives every instance it starts, so that all
    /// of them share what must be shared (a cookie secret, a Redis URL).
    fn instance_env(_args: &Self::Args) -> Vec<(OsString, OsString)> {
        Vec::new()
    }

    /// The narrated walkthrough of `stageN demo`. `exe` is this binary,
    /// to start a fresh topology from; `services` are what
    /// [`Stage::services`] started, for a demo that stops one on purpose.
    fn demo(
        args: Self::Args,
        exe: std::path::PathBuf,
        services: Services,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Servers a stage started for itself, kept running while this lives.
#[derive(Default)]
pub struct Services {
    running: Vec<Box<dyn Any + Send + Sync>>,
    descriptions: Vec<String>,
}

impl Services {
    /// Keeps `service` running (until this value is dropped), described on
    /// the banner as `description`.
    pub fn keep(&mut self, service: impl Send + Sync + 'static, description: String) {
        self.running.push(Box::new(service));
        self.descriptions.push(description);
    }

    /// The running service of type `T`, to stop or inspect (demos).
    pub fn get_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.running.iter_mut().find_map(|s| s.downcast_mut::<T>())
    }

    /// One line per service, for the banner.
    pub fn descriptions(&self) -> &[String] {
        &self.descriptions
    }
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.descriptions).finish()
    }
}

/// The flags of a stage that has none of its own.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct NoArgs {}
