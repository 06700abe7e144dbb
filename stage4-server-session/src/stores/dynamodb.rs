//! Sessions in DynamoDB (the MyClothes case's NoSQL option): durable, a
//! managed service that AWS replicates across three zones, an item per
//! session, and a change as one conditional `UpdateItem`.
//!
//! * **Where**: one table, [`TABLE`], one item per session, keyed by the
//!   SHA-256 of the session id (`id`). The item holds `cart` (a map: SKU →
//!   quantity), `added` (SKU → when its line was first added, to keep the
//!   lines in order: a map has none), `applied` (idempotency key → until
//!   when it is remembered), `expires_ms` and `ttl`.
//! * **How a change stays atomic**: DynamoDB applies one `UpdateItem` to
//!   one item atomically, and checks its `ConditionExpression` in the same
//!   step. So the rules are conditions, never a read followed by a write:
//!   a new line is `SET cart.#sku = :q` *if* `attribute_not_exists(cart.#sku)
//!   AND size(cart) < 200`; more of a line is `ADD cart.#sku :q` *if*
//!   `cart.#sku <= 99 - :q`. When a condition fails, one consistent read
//!   says which rule refused, and the answer is the refusal (or, if the
//!   cart changed in between, the change is tried again).
//! * **A fact to design for**: `ADD` and `SET` on a nested path
//!   (`cart.#sku`) fail ("The document path provided in the update
//!   expression is invalid for update") unless the map exists. A session's
//!   item is therefore created with its empty maps (`PutItem`, on the first
//!   change), and no change ever removes the maps themselves.
//! * **Idempotency**: a change with a key also sets `applied.#key`, on the
//!   condition that it is not set yet: the change and its record are one
//!   write. A retry finds the key and gets the cart as it is now, marked
//!   as a replay. Once the item holds twice [`REMEMBERED_KEYS`] records, a
//!   second `UpdateItem`, sent in the background, removes those past their
//!   time and all but the newest [`REMEMBERED_KEYS`]: without it a long-
//!   lived session's item would grow with every change, until DynamoDB's
//!   400 KB item limit refused them all. (No expression can remove map
//!   entries by their value, so the keys to remove are read from the
//!   change's own answer; one extra write per sixteen changes.)
//! * **Expiry**: DynamoDB's TTL is *not* a read guard. AWS deletes expired
//!   items lazily (typically within two days), and dynalite does not do
//!   TTL at all. So every read and every condition checks `expires_ms >
//!   :now` itself; `ttl` (seconds) is there for the endpoints that delete.
//! * **Failure**: a server that does not answer within the store timeout
//!   → 503, as for every store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};
use shop::cart::{CartOp, MAX_LINES, MAX_QTY};
use shop::{ApiError, CartReply, CartRequest, CartStore, IdempotencyKey};

use crate::error::SessionError;
use crate::sessions::{
    self, APPLIED_FOR, Answer, Mode, Purpose, REMEMBERED_KEYS, SessionSettings, SessionStore,
    digest,
};

/// The sessions' table.
pub const TABLE: &str = "myclothes_sessions";

/// The most idempotency records one pruning removes (see
/// `forget_old_keys`): their names fit well inside an expression's 4 KB.
const FORGET_AT_ONCE: usize = 100;

/// How often a change is tried again when the cart changed between its
/// refused condition and the read that explains the refusal.
const MAX_ATTEMPTS: u32 = 5;

/// How long `prepare` waits for a new table to become active (AWS takes
/// seconds; dynalite, started with `--createTableMs 0`, none).
const TABLE_READY_WITHIN: Duration = Duration::from_secs(60);

/// A failed call to DynamoDB, as text for the log (the SDK's own errors
/// only show their context through [`DisplayErrorContext`]).
type Failure = String;

/// Carts in DynamoDB, an item per session.
#[derive(Debug, Clone)]
pub struct DynamoSessions {
    client: Client,
    settings: SessionSettings,
}

/// Where the credentials come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credentialed {
    /// Fixed, made-up ones: for a server this shop started itself (dynalite
    /// checks that a request is signed, not by whom).
    Local,
    /// The SDK's default chain (environment, profile, instance role), as
    /// for any other endpoint, AWS's own above all.
    DefaultChain,
}

impl DynamoSessions {
    /// A store talking to the DynamoDB API at `url`.
    pub async fn connect(
        url: &str,
        credentials: Credentialed,
        settings: SessionSettings,
    ) -> Result<Self, Failure> {
        // rustls with *ring*, as the balancer: the SDK's default HTTPS
        // client would build aws-lc (cmake and a long C build).
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .endpoint_url(url)
            // No retries inside the SDK: an `ADD` whose answer was lost
            // may have been applied, and sending it again would add twice.
            // The shop answers 503 instead, and the client retries with
            // its idempotency key, which the item remembers.
            .retry_config(aws_config::retry::RetryConfig::disabled());
        let loader = match credentials {
            Credentialed::Local => loader
                .region(Region::new("us-east-1"))
                .credentials_provider(Credentials::new("local", "local", None, None, "myclothes")),
            Credentialed::DefaultChain => loader,
        };
        let shared = loader.load().await;
        let mut config = aws_sdk_dynamodb::config::Builder::from(&shared);
        if shared.region().is_none() {
            // The region names the signature's scope; a local endpoint
            // takes any.
            config.set_region(Some(Region::new("us-east-1")));
        }
        Ok(Self {
            client: Client::from_conf(config.build()),
            settings,
        })
    }

    /// The SDK's client, for tests and demos to look inside the table.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Makes the table if it is not there (every instance may: a second
    /// `CreateTable` is refused as "in use", which is fine), waits until it
    /// is active, and turns on TTL deletion where the endpoint has it.
    pub async fn prepare(&self) -> Result<(), Failure> {
        // A frozen endpoint must not hang `up`: the whole preparation has
        // the table's deadline.
        tokio::time::timeout(TABLE_READY_WITHIN, self.prepare_in())
            .await
            .map_err(|_| format!("no answer from DynamoDB within {TABLE_READY_WITHIN:?}"))?
    }

    async fn prepare_in(&self) -> Result<(), Failure> {
        let described = self.client.describe_table().table_name(TABLE).send().await;
        match described {
            Ok(_) => {}
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                self.create_table().await?;
            }
            Err(error) => return Err(DisplayErrorContext(&error).to_string()),
        }
        self.wait_until_active().await?;
        self.enable_ttl().await;
        Ok(())
    }

    async fn create_table(&self) -> Result<(), Failure> {
        let built = |e: aws_sdk_dynamodb::error::BuildError| e.to_string();
        let created = self
            .client
            .create_table()
            .table_name(TABLE)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("id")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(built)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("id")
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(built)?,
            )
            // On-demand: no capacity to guess for a demo.
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) =>
            {
                Ok(())
            }
            Err(error) => Err(DisplayErrorContext(&error).to_string()),
        }
    }

    async fn wait_until_active(&self) -> Result<(), Failure> {
        let deadline = tokio::time::Instant::now() + TABLE_READY_WITHIN;
        loop {
            let described = self
                .client
                .describe_table()
                .table_name(TABLE)
                .send()
                .await
                .map_err(|error| DisplayErrorContext(&error).to_string())?;
            let status = described.table().and_then(|table| table.table_status());
            if status == Some(&TableStatus::Active) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "the table {TABLE} was not active within {TABLE_READY_WITHIN:?} ({status:?})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Asks the endpoint to delete expired items by their `ttl`. Said once
    /// per process where it cannot: nothing depends on it.
    async fn enable_ttl(&self) {
        static SAID: AtomicBool = AtomicBool::new(false);
        let spec = TimeToLiveSpecification::builder()
            .attribute_name("ttl")
            .enabled(true)
            .build();
        let Ok(spec) = spec else { return };
        let asked = self
            .client
            .update_time_to_live()
            .table_name(TABLE)
            .time_to_live_specification(spec)
            .send()
            .await;
        if let Err(error) = asked {
            let already = error
                .message()
                .is_some_and(|m| m.contains("already enabled"));
            if !already && !SAID.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    code = error.code().unwrap_or("?"),
                    "this DynamoDB endpoint does not delete expired sessions (no TTL); \
                     every read checks expiry itself, so none is served"
                );
            }
        }
    }

    fn key(session: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([("id".to_owned(), AttributeValue::S(session.to_owned()))])
    }

    /// `expires_ms` and `ttl` for a session renewed now.
    fn renewal(&self, now_ms: u64) -> [(&'static str, AttributeValue); 2] {
        let expires_ms = now_ms + u64::try_from(self.settings.ttl.as_millis()).unwrap_or(u64::MAX);
        [
            (":e", number(expires_ms)),
            (":t", number(expires_ms.div_ceil(1000))),
        ]
    }

    /// Makes a new session's item, with the empty maps that its changes'
    /// nested paths need. `false`: the id was taken.
    async fn create(&self, session: &str) -> Result<bool, Failure> {
        let now_ms = now_ms();
        let mut item = Self::key(session);
        let empty = || AttributeValue::M(HashMap::new());
        item.insert("born".into(), number(now_ms / 1000));
        item.insert("v".into(), number(0));
        item.insert("cart".into(), empty());
        item.insert("added".into(), empty());
        item.insert("applied".into(), empty());
        for (name, value) in self.renewal(now_ms) {
            let attribute = if name == ":e" { "expires_ms" } else { "ttl" };
            item.insert(attribute.into(), value);
        }
        sessions::round_trip();
        let put = self
            .client
            .put_item()
            .table_name(TABLE)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(id)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(error) => Err(DisplayErrorContext(&error).to_string()),
        }
    }

    /// One conditional update of a live session's item, with the renewal,
    /// the idempotency key's record and (for a change) the next version
    /// added. The cart and the item's version afterwards; `None`: a
    /// condition failed.
    async fn update(
        &self,
        session: &str,
        change: Change,
        key: Option<&IdempotencyKey>,
    ) -> Result<Option<(Answer, u64)>, Failure> {
        let now_ms = now_ms();
        let mut set = vec!["expires_ms = :e", "#t = :t"];
        set.extend(change.set);
        let mut conditions = vec!["expires_ms > :now"];
        conditions.extend(change.conditions);
        let mut names = change.names;
        names.push(("#t", "ttl".to_owned()));
        let mut values: Vec<(&str, AttributeValue)> = change.values;
        values.extend(self.renewal(now_ms));
        values.push((":now", number(now_ms)));
        if let Some(key) = key {
            set.push("applied.#key = :kept");
            conditions.push("attribute_not_exists(applied.#key)");
            names.push(("#key", key.as_str().to_owned()));
            let kept_until = now_ms + u64::try_from(APPLIED_FOR.as_millis()).unwrap_or(u64::MAX);
            values.push((":kept", number(kept_until)));
        }
        let mut expression = format!("SET {}", set.join(", "));
        let mut add: Vec<&str> = change.add.into_iter().collect();
        if change.bumps_version {
            add.push("v :one");
            values.push((":one", number(1)));
        }
        if !add.is_empty() {
            expression.push_str(" ADD ");
            expression.push_str(&add.join(", "));
        }
        if let Some(remove) = change.remove {
            expression.push_str(" REMOVE ");
            expression.push_str(remove);
        }
        let mut request = self
            .client
            .update_item()
            .table_name(TABLE)
            .set_key(Some(Self::key(session)))
            .update_expression(expression)
            .condition_expression(conditions.join(" AND "))
            .return_values(ReturnValue::AllNew);
        for (placeholder, name) in names {
            request = request.expression_attribute_names(placeholder, name);
        }
        for (placeholder, value) in values {
            request = request.expression_attribute_values(placeholder, value);
        }
        sessions::round_trip();
        match request.send().await {
            Ok(output) => {
                let item = output.attributes();
                if key.is_some() {
                    self.forget_old_keys(session, item, now_ms);
                }
                let version = number_of(item.and_then(|item| item.get("v")));
                Ok(Some((cart_of(item), version)))
            }
            Err(error)
                if matches!(
                    error.as_service_error(),
                    Some(UpdateItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Ok(None)
            }
            Err(error) => Err(DisplayErrorContext(&error).to_string()),
        }
    }

    /// Removes the idempotency records of `item` past their time and all
    /// but the newest [`REMEMBERED_KEYS`], once it holds twice that many;
    /// in the background, since the change it follows is made and answered.
    /// A removal that fails is tried again after the next change.
    fn forget_old_keys(
        &self,
        session: &str,
        item: Option<&HashMap<String, AttributeValue>>,
        now_ms: u64,
    ) {
        let Some(applied) = map_of(item.and_then(|item| item.get("applied"))) else {
            return;
        };
        if applied.len() < 2 * REMEMBERED_KEYS {
            return;
        }
        let mut newest_first: Vec<(u64, &String)> = applied
            .iter()
            .map(|(key, kept_until)| (number_of(Some(kept_until)), key))
            .collect();
        newest_first.sort_unstable_by(|a, b| b.cmp(a));
        let mut request = self
            .client
            .update_item()
            .table_name(TABLE)
            .set_key(Some(Self::key(session)))
            // Never create an item for a session deleted meanwhile.
            .condition_expression("attribute_exists(applied)");
        let mut removed = Vec::new();
        // At most FORGET_AT_ONCE per call, oldest first: an expression is
        // limited to 4 KB, and an item that grew large before this pruning
        // existed shrinks over a few changes instead of failing every time.
        let forgotten = newest_first
            .iter()
            .enumerate()
            .filter(|&(rank, &(kept_until, _))| rank >= REMEMBERED_KEYS || kept_until <= now_ms)
            .rev()
            .take(FORGET_AT_ONCE);
        for (n, (_, (_, key))) in forgotten.enumerate() {
            let placeholder = format!("#old{n}");
            removed.push(format!("applied.{placeholder}"));
            request = request.expression_attribute_names(placeholder, key.as_str());
        }
        let request = request.update_expression(format!("REMOVE {}", removed.join(", ")));
        let timeout = self.settings.timeout;
        tokio::spawn(async move {
            sessions::round_trip();
            match tokio::time::timeout(timeout, request.send()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(
                    error = %DisplayErrorContext(&error),
                    "old idempotency records not removed; the next change tries again"
                ),
                Err(_) => tracing::debug!("old idempotency records not removed in time"),
            }
        });
    }

    /// The session's item, read consistently (an eventually consistent
    /// read could miss the change this shopper just made), if it is live.
    async fn live_item(
        &self,
        session: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, Failure> {
        sessions::round_trip();
        let output = self
            .client
            .get_item()
            .table_name(TABLE)
            .set_key(Some(Self::key(session)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|error| DisplayErrorContext(&error).to_string())?;
        Ok(output
            .item
            .filter(|item| number_of(item.get("expires_ms")) > now_ms()))
    }

    /// One change to a live session: the conditional updates its operation
    /// needs, and when every one is refused, the reason; with the item's
    /// new version when the change was made. `None`: the cart changed
    /// under every attempt.
    async fn change_in(
        &self,
        session: &str,
        op: &CartOp,
        key: Option<&IdempotencyKey>,
    ) -> Result<Option<(Answer, Option<u64>)>, Failure> {
        let refused = |answer| Ok(Some((answer, None)));
        for _ in 0..MAX_ATTEMPTS {
            for change in Change::tries(op, now_us()) {
                if let Some((answer, version)) = self.update(session, change, key).await? {
                    return Ok(Some((answer, Some(version))));
                }
            }
            // Every condition failed: read why.
            let Some(item) = self.live_item(session).await? else {
                return refused(Answer::Unknown);
            };
            if let Some(key) = key
                && map_of(item.get("applied")).is_some_and(|m| m.contains_key(key.as_str()))
            {
                // With the item's version: a cache in front must drop its
                // copy now, since the first try, if its answer was lost,
                // may never have told it.
                let version = number_of(item.get("v"));
                return Ok(Some((
                    Answer::Replayed(Box::new(cart_of(Some(&item)))),
                    Some(version),
                )));
            }
            if let Some(refusal) = refusal(op, &item) {
                return refused(refusal);
            }
            // The cart changed between the update and the read: again.
        }
        Ok(None)
    }

    /// A live session's cart with the item's version and expiry: one
    /// consistent `GetItem`, and a second call that renews the expiry once
    /// it has run down (at most once a minute per session).
    pub(crate) async fn snapshot(&self, id: &str) -> Result<Option<Snapshot>, ApiError> {
        let session = digest(id);
        let Some(item) = self
            .within_timeout(self.live_item(&session), Purpose::Read)
            .await?
        else {
            return Ok(None);
        };
        let mut expires_ms = number_of(item.get("expires_ms"));
        let left = Duration::from_millis(expires_ms.saturating_sub(now_ms()));
        if left + self.settings.renew_after() < self.settings.ttl {
            self.within_timeout(
                self.update(&session, Change::default(), None),
                Purpose::Read,
            )
            .await?;
            expires_ms = now_ms() + u64::try_from(self.settings.ttl.as_millis()).unwrap_or(0);
        }
        Ok(Some(Snapshot {
            cart: cart_of(Some(&item)),
            version: number_of(item.get("v")),
            expires_ms,
        }))
    }

    /// [`SessionStore::change`], with the item's new version when the
    /// change was made (`None` when it was refused or replayed).
    pub(crate) async fn change_versioned(
        &self,
        id: &str,
        mode: Mode,
        op: &CartOp,
        key: Option<&IdempotencyKey>,
    ) -> Result<(Answer, Option<u64>), ApiError> {
        let session = digest(id);
        if mode == Mode::Create
            && !self
                .within_timeout(self.create(&session), Purpose::Change)
                .await?
        {
            return Ok((Answer::Taken, None));
        }
        self.within_timeout(self.change_in(&session, op, key), Purpose::Change)
            .await?
            .ok_or_else(|| {
                tracing::warn!(
                    attempts = MAX_ATTEMPTS,
                    "a cart kept changing under a change"
                );
                SessionError::Contended.into()
            })
    }

    /// Waits at most the store timeout ([`sessions::within_timeout`]).
    async fn within_timeout<T>(
        &self,
        call: impl Future<Output = Result<T, Failure>>,
        purpose: Purpose,
    ) -> Result<T, ApiError> {
        sessions::within_timeout(self.settings.timeout, purpose, call, |_| false).await
    }
}

/// A live session as the record holds it, for a cache to keep.
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    /// [`Answer::Cart`].
    pub(crate) cart: Answer,
    /// Goes up by one with every change of the cart.
    pub(crate) version: u64,
    /// When the session expires, unix milliseconds.
    pub(crate) expires_ms: u64,
}

/// The parts of one conditional update that an operation brings.
#[derive(Debug, Default)]
struct Change {
    /// Whether the item's version goes up (every change of the cart;
    /// not a renewal of the expiry).
    bumps_version: bool,
    set: Vec<&'static str>,
    add: Option<&'static str>,
    remove: Option<&'static str>,
    conditions: Vec<&'static str>,
    names: Vec<(&'static str, String)>,
    values: Vec<(&'static str, AttributeValue)>,
}

impl Change {
    /// The updates to try, in turn, for `op`. Adding or setting a line is
    /// two: as a new line and as a change to a line that is there, the
    /// likelier first (adding: a new line; setting: a line that is there). Each is refused by its condition unless it is the right one
    /// and the rules allow it.
    fn tries(op: &CartOp, now_us: u64) -> Vec<Change> {
        let mut tries = Self::unversioned_tries(op, now_us);
        for change in &mut tries {
            change.bumps_version = op.is_write();
        }
        tries
    }

    fn unversioned_tries(op: &CartOp, now_us: u64) -> Vec<Change> {
        let sku = |sku: &shop::cart::KnownSku| vec![("#sku", sku.as_str().to_owned())];
        let new_line = |known, qty: shop::cart::Quantity| Change {
            set: vec!["cart.#sku = :q", "added.#sku = :at"],
            conditions: vec!["attribute_not_exists(cart.#sku)", "size(cart) < :lines"],
            names: sku(known),
            values: vec![
                (":q", number(qty.get())),
                (":at", number(now_us)),
                (":lines", number(MAX_LINES)),
            ],
            ..Change::default()
        };
        match op {
            CartOp::View => vec![Change::default()],
            CartOp::Add(known, qty) => vec![
                new_line(known, *qty),
                Change {
                    add: Some("cart.#sku :q"),
                    conditions: vec!["cart.#sku <= :room"],
                    names: sku(known),
                    values: vec![
                        (":q", number(qty.get())),
                        (":room", number(MAX_QTY - qty.get())),
                    ],
                    ..Change::default()
                },
            ],
            // A line's quantity is set mostly on a line that is there (the
            // page's − button): that update first.
            CartOp::Set(known, qty) => vec![
                Change {
                    set: vec!["cart.#sku = :q"],
                    conditions: vec!["attribute_exists(cart.#sku)"],
                    names: sku(known),
                    values: vec![(":q", number(qty.get()))],
                    ..Change::default()
                },
                new_line(known, *qty),
            ],
            CartOp::Remove(known) => vec![Change {
                remove: Some("cart.#sku, added.#sku"),
                names: sku(known),
                ..Change::default()
            }],
            CartOp::Clear => vec![Change {
                set: vec!["cart = :empty", "added = :empty"],
                values: vec![(":empty", AttributeValue::M(HashMap::new()))],
                ..Change::default()
            }],
        }
    }
}

/// Which rule refuses `op` on this item, if one does (the same order of
/// checks as Redis's `cart.lua`).
fn refusal(op: &CartOp, item: &HashMap<String, AttributeValue>) -> Option<Answer> {
    let (known, qty, adds) = match op {
        CartOp::Add(known, qty) => (known, qty, true),
        CartOp::Set(known, qty) => (known, qty, false),
        _ => return None,
    };
    let cart = map_of(item.get("cart"))?;
    match cart.get(known.as_str()) {
        None if cart.len() >= MAX_LINES => Some(Answer::CartFull),
        Some(current) if adds => {
            let total = number_of(Some(current)) + u64::from(qty.get());
            (total > u64::from(MAX_QTY))
                .then(|| Answer::LineFull(u32::try_from(total).unwrap_or(u32::MAX)))
        }
        _ => None,
    }
}

impl SessionStore for DynamoSessions {
    fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    fn label(&self) -> &'static str {
        "dynamodb; durable, atomic by conditional UpdateItem"
    }

    async fn read(&self, id: &str) -> Result<Answer, ApiError> {
        Ok(match self.snapshot(id).await? {
            Some(snapshot) => snapshot.cart,
            None => Answer::Unknown,
        })
    }

    async fn change(
        &self,
        id: &str,
        mode: Mode,
        op: &CartOp,
        key: Option<&IdempotencyKey>,
    ) -> Result<Answer, ApiError> {
        Ok(self.change_versioned(id, mode, op, key).await?.0)
    }

    async fn delete(&self, id: &str) -> Result<(), ApiError> {
        let deleted = async {
            sessions::round_trip();
            self.client
                .delete_item()
                .table_name(TABLE)
                .set_key(Some(Self::key(&digest(id))))
                .send()
                .await
                .map(drop)
                .map_err(|error| DisplayErrorContext(&error).to_string())
        };
        self.within_timeout(deleted, Purpose::Change).await
    }
}

impl CartStore for DynamoSessions {
    async fn apply(&self, request: CartRequest<'_>) -> Result<CartReply, ApiError> {
        sessions::apply(self, request).await
    }
}

/// The cart in an item, its lines in the order they were added.
fn cart_of(item: Option<&HashMap<String, AttributeValue>>) -> Answer {
    let Some(item) = item else {
        return Answer::Cart(Vec::new());
    };
    let added = map_of(item.get("added"));
    let mut lines: Vec<(u64, String, String)> = map_of(item.get("cart"))
        .into_iter()
        .flatten()
        .map(|(sku, qty)| {
            let at = added.map_or(0, |added| number_of(added.get(sku)));
            (at, sku.clone(), number_of(Some(qty)).to_string())
        })
        .collect();
    lines.sort();
    Answer::Cart(lines.into_iter().map(|(_, sku, qty)| (sku, qty)).collect())
}

fn map_of(value: Option<&AttributeValue>) -> Option<&HashMap<String, AttributeValue>> {
    value.and_then(|value| value.as_m().ok())
}

/// A number attribute as an integer (0 when it is missing or not one).
fn number_of(value: Option<&AttributeValue>) -> u64 {
    value
        .and_then(|value| value.as_n().ok())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn number(n: impl ToString) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

/// Unix milliseconds, by this instance's clock (DynamoDB has no clock a
/// condition could read; instances must keep theirs in sync, as NTP does).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Unix microseconds: when a line was added, to keep the lines in order.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}
