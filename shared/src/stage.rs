//! What a stage is: the one seam every stage fills.
//!
//! A stage crate implements [`Stage`]:
//!
//! | what | how |
//! | --- | --- |
//! | name and lesson | [`Stage::INFO`] |
//! | its flags | [`Stage::Args`] (clap, each with an environment fallback) |
//! | where the cart lives | [`Stage::Carts`], a [`CartStore`] |
//! | what else its routes need | [`Stage::State`] (`()` for nothing; a database and a cache, say) |
//! | servers or secrets it makes for itself | [`Stage::services`] |
//! | routes of its own | [`Stage::routes`] |
//! | where the catalog comes from | [`Stage::list_products`], [`Stage::get_product`] (the static catalog unless it says otherwise) |
//! | what it adds to the page | [`Stage::WIDGETS`], [`Stage::LOG_HEADERS`] |
//! | its own errors | an enum implementing [`crate::error::StageError`] |
//! | its demo | [`Stage::demo`] |
//!
//! Everything else (the HTTP surface, `up`, `serve`, the balancer, the test
//! topology) is the same for every stage and lives in this crate.

use std::any::Any;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::instance::Instance;
use crate::store::CartStore;
use crate::topology::Placement;
use std::net::IpAddr;

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
    /// Whether the balancer pins shoppers to instances.
    pub sticky: bool,
}

/// Who the servers [`Stage::services`] starts are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `up` and `demo`: every instance the launcher starts shares them.
    Fleet,
    /// `serve`: one instance, started on its own. Anything made up here
    /// (a private server, a secret) is not shared with its peers.
    Instance,
}

/// Something a stage adds to the shop page.
#[derive(Debug)]
pub struct Widget {
    /// CSS for the page's `<style>`.
    pub style: &'static str,
    /// The widget's HTML, placed under the cart. It is given the headers
    /// of the cart reply the page was drawn with (a widget may show what a
    /// header says). Every value put into it must be escaped
    /// ([`crate::http::page::escape`]).
    pub html: fn(&HeaderMap) -> String,
    /// Its script, run after the page's own, which offers `window.shop`
    /// (`shop.api(method, path, body)`, `shop.onResponse(fn)`, …; see
    /// `shop.js`).
    pub script: &'static str,
}

/// One evolution step of the shop.
pub trait Stage: Sized + Send + Sync + 'static {
    /// The stage's name, lesson and balancer setup.
    const INFO: &'static StageInfo;

    /// The stage's own command-line flags (accepted by `up`, `serve` and
    /// `demo`). Each needs an environment fallback (`env = "…"`), through
    /// which `up` hands it to the instances, and serialises to the text the
    /// flag parses from (see [`crate::cli::instance_env`]). Stages with
    /// none use [`NoArgs`].
    type Args: clap::Args + serde::Serialize + Clone + std::fmt::Debug + Send + Sync + 'static;

    /// Where this stage keeps the cart.
    type Carts: CartStore;

    /// What the stage's own routes need besides the carts (a database and
    /// a cache, say); `()` when they need nothing.
    type State: Send + Sync + 'static;

    /// Starts what the stage needs and was not given (a private
    /// server when no URL was given, a secret the instances must share), and
    /// records in `args` where to find it. `up`, `serve` and `demo` call
    /// this first; what it starts runs as long as the returned [`Services`]
    /// lives.
    fn services(
        _args: &mut Self::Args,
        _scope: Scope,
    ) -> impl Future<Output = Result<Services, BoxError>> + Send {
        async { Ok(Services::default()) }
    }

    /// Builds one instance's cart store and state (in `serve` mode).
    fn start(
        args: &Self::Args,
    ) -> impl Future<Output = Result<(Self::Carts, Self::State), BoxError>> + Send;

    /// The balancing policy `up` runs this stage behind; the stage's
    /// default ([`StageInfo::policy`]) unless its flags choose another.
    fn policy(_args: &Self::Args) -> lb::Policy {
        Self::INFO.policy
    }

    /// Routes only this stage has, merged into the shared surface.
    fn routes() -> Router<Arc<Shop<Self>>> {
        Router::new()
    }

    /// `GET /api/products`. The static catalog unless the stage keeps its
    /// own (in a database, say).
    fn list_products(
        _shop: &Shop<Self>,
    ) -> impl Future<Output = Result<Response, ApiError>> + Send {
        async { Ok(([(CONTENT_TYPE, "application/json")], Catalog::get().json()).into_response()) }
    }

    /// `GET /api/products/{sku}`, from the same source as [`Self::list_products`].
    fn get_product(
        _shop: &Shop<Self>,
        sku: String,
    ) -> impl Future<Output = Result<Response, ApiError>> + Send {
        async move {
            Catalog::get()
                .find(&sku)
                .map(|product| axum::Json(product).into_response())
                .ok_or(ApiError::UnknownSku(sku))
        }
    }

    /// What the stage adds to the shop page.
    const WIDGETS: &'static [Widget] = &[];

    /// Response headers the page's request log shows next to each call,
    /// lower case: the headers in which the stage shows its work.
    const LOG_HEADERS: &'static [&'static str] = &[];

    /// The narrated walkthrough of `stageN demo`. `exe` is this binary,
    /// to start a fresh topology from; `services` are what
    /// [`Stage::services`] started, for a demo that stops one on purpose.
    fn demo(
        args: Self::Args,
        exe: std::path::PathBuf,
        services: Services,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// One instance of stage `S`: what every request handler is given.
pub struct Shop<S: Stage> {
    /// Who this instance is, and how busy.
    pub instance: Instance,
    /// Where the carts live.
    pub carts: S::Carts,
    /// What the stage's own routes need.
    pub state: S::State,
}

impl<S: Stage> std::fmt::Debug for Shop<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shop")
            .field("stage", &S::INFO.package)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl<S: Stage> Shop<S> {
    /// The stage's name and lesson.
    pub fn info(&self) -> &'static StageInfo {
        S::INFO
    }
}

/// Servers a stage started for itself, kept running while this lives.
#[derive(Default)]
pub struct Services {
    running: Vec<Box<dyn Any + Send + Sync>>,
    descriptions: Vec<String>,
    placement: Option<Arc<dyn Placement>>,
    balancer_source: Option<IpAddr>,
}

impl Services {
    /// Keeps `service` running (until this value is dropped), described on
    /// the banner as `description`.
    pub fn keep(&mut self, service: impl Send + Sync + 'static, description: String) {
        self.running.push(Box::new(service));
        self.descriptions.push(description);
    }

    /// Adds a banner line about something made for this run that is not a
    /// running server (a shared secret, say).
    pub fn describe(&mut self, description: String) {
        self.descriptions.push(description);
    }

    /// The running service of type `T`, to stop or inspect (demos).
    pub fn get_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.running.iter_mut().find_map(|s| s.downcast_mut::<T>())
    }

    /// One line per service, for the banner.
    pub(crate) fn descriptions(&self) -> &[String] {
        &self.descriptions
    }

    /// Has `up` run the instances where `placement` says, reached by the
    /// balancer from `balancer_source` (stage 7's zones).
    pub fn place_instances(
        &mut self,
        placement: Arc<dyn Placement>,
        balancer_source: Option<IpAddr>,
    ) {
        self.placement = Some(placement);
        self.balancer_source = balancer_source;
    }

    /// Where `up` runs the instances (see [`Self::place_instances`]).
    pub fn placement(&self) -> (Option<Arc<dyn Placement>>, Option<IpAddr>) {
        (self.placement.clone(), self.balancer_source)
    }
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.descriptions).finish()
    }
}

/// The flags of a stage that has none of its own.
#[derive(Clone, Debug, Default, clap::Args, serde::Serialize)]
pub struct NoArgs {}
