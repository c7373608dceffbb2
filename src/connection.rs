//! The addon's own connection: built on first use from a connection string or from a
//! Node `MongoClient`'s settings, then shared by every call of one `ResourceLock`.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use std::future::Future;

use lock_core::mongodb::error::{Error as DriverError, ErrorKind};
use lock_core::mongodb::event::sdam::SdamEvent;
use lock_core::mongodb::event::EventHandler;
use lock_core::mongodb::options::{ClientOptions, ConnectionString, WriteConcern};
use lock_core::mongodb::Client;
use lock_core::{LockError, LockService};
use napi::Env;
use tokio::sync::{watch, OnceCell};
use tokio::time::Instant;

use crate::node_client::NodeClientSettings;

/// How long after its last call a process is kept alive at most for tickets leaving
/// queues: what a ticket left behind costs the others is a lease, of which this is the
/// default.
const KEEP_ALIVE_FOR_TICKETS: Duration = Duration::from_secs(5);

pub enum Source {
    Url(String),
    NodeClient(Box<NodeClientSettings>),
}

pub struct Connection {
    source: Source,
    /// `DSQ_MONGODB_RESOURCE_CLIENT_DB_NAME`, else `databaseName`; else the client's.
    database: Option<String>,
    /// The original's `connectTimeout`, used when no client is passed.
    connect_timeout: Option<Duration>,
    write_concern: Option<WriteConcern>,
    /// The `maxPoolSize` option: the lock connection's pool, whatever the client's.
    max_pool_size: Option<u32>,
    service: OnceCell<Arc<LockService>>,
    closed: AtomicBool,
    /// Whether a call's hold on the process (`js_thread.rs`) was handed over to the
    /// wait for the service's tickets to leave their queues (`keep_alive_for_tickets`).
    keeping_alive: AtomicBool,
    /// When that wait ends at the latest.
    keep_until: Mutex<Instant>,
    /// The server's refusal of our credentials, while it stands (`unless_refused`).
    refused: Arc<watch::Sender<Option<DriverError>>>,
    /// Passwords, removed from every error message (and from every signal's reason).
    pub secrets: Arc<[String]>,
}

thread_local! {
    /// The connections made by the JavaScript environment of this thread that may still
    /// be open (`close_when_env_ends`); `None` until the first, and after the end.
    static MADE_HERE: RefCell<Option<Vec<Weak<Connection>>>> = const { RefCell::new(None) };
}

impl Connection {
    pub fn new(
        source: Source,
        database: Option<String>,
        connect_timeout: Option<Duration>,
        write_concern: Option<WriteConcern>,
        max_pool_size: Option<u32>,
    ) -> Self {
        let secrets = match &source {
            Source::NodeClient(settings) => {
                settings.password().map(str::to_owned).into_iter().collect()
            }
            Source::Url(url) => url_secrets(url),
        };
        Connection {
            source,
            database,
            connect_timeout,
            write_concern,
            max_pool_size,
            service: OnceCell::new(),
            closed: AtomicBool::new(false),
            keeping_alive: AtomicBool::new(false),
            keep_until: Mutex::new(Instant::now()),
            refused: Arc::new(watch::channel(None).0),
            secrets: secrets.into(),
        }
    }

    /// The lock service, connecting on first use.
    pub async fn service(&self) -> Result<Arc<LockService>, LockError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(LockError::Closed);
        }
        let service = self
            .service
            .get_or_try_init(|| async {
                let mut options = self.client_options().await?;
                options.sdam_event_handler = Some(watch_refusals(self.refused.clone()));
                let database = self
                    .database
                    .clone()
                    .or_else(|| options.default_database.clone())
                    .unwrap_or_else(|| "test".into());
                let client = Client::with_options(options)?;
                Ok::<_, LockError>(LockService::new(
                    client,
                    &database,
                    self.write_concern.clone(),
                ))
            })
            .await
            .cloned()?;
        // `close()` may have run while we were connecting.
        if self.closed.load(Ordering::SeqCst) {
            service.close().await;
            return Err(LockError::Closed);
        }
        Ok(service)
    }

    /// `work`, unless the server refuses our credentials first. The Rust driver keeps
    /// selecting a server until its timeout before it reports a refused authentication
    /// (10 s measured); the Node driver fails at once, and so does this.
    pub async fn unless_refused<T>(
        &self,
        work: impl Future<Output = Result<T, LockError>>,
    ) -> Result<T, LockError> {
        let mut refused = self.refused.subscribe();
        tokio::select! {
            result = work => result,
            Ok(refusal) = refused.wait_for(Option::is_some) => {
                Err(LockError::Mongo(refusal.clone().expect("waited for Some")))
            }
        }
    }

    /// Whether this caller is to keep the process alive until no ticket of the
    /// service is in a queue (then `keep_alive_for_tickets`): one may be, and nothing
    /// keeps it alive for that yet. A release may leave a place in the queue for this
    /// process's next call, given up in the background when no call takes it (core's
    /// `rejoin.rs`): a process that ended first would leave the place behind, for the
    /// lock to wait out a lease when it came up. Every call that ends with tickets
    /// counted moves the end of the keeping to `KEEP_ALIVE_FOR_TICKETS` from now.
    pub fn claim_keeping_alive(&self) -> bool {
        if !self.has_tickets() {
            return false;
        }
        *self.lock_keep_until() = Instant::now() + KEEP_ALIVE_FOR_TICKETS;
        self.take_keeping()
    }

    /// After `claim_keeping_alive`: waits in the background until no ticket of the
    /// service is in a queue, or its time is up, then calls `done`.
    pub fn keep_alive_for_tickets(self: &Arc<Self>, done: impl FnOnce() + Send + 'static) {
        let connection = self.clone();
        tokio::spawn(async move {
            loop {
                if let Some(service) = connection.service.get() {
                    let until = *connection.lock_keep_until();
                    let _ = tokio::time::timeout_at(until, service.no_tickets()).await;
                }
                connection.keeping_alive.store(false, Ordering::SeqCst);
                // A call that ended meanwhile saw this wait running and did not keep
                // the process alive itself: its tickets are still this wait's.
                let again = connection.has_tickets()
                    && Instant::now() < *connection.lock_keep_until()
                    && connection.take_keeping();
                if !again {
                    break;
                }
            }
            done();
        });
    }

    /// Whether this caller is the one to keep the process alive now.
    fn take_keeping(&self) -> bool {
        self.keeping_alive
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    fn has_tickets(&self) -> bool {
        self.service.get().is_some_and(|s| s.has_tickets())
    }

    fn lock_keep_until(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.keep_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes this connection in the background when the JavaScript environment that
    /// made it ends without `close()` (a worker that ends or is terminated). Otherwise
    /// its waits, and the keepers of locks whose results can no longer be delivered
    /// to that environment, would go on renewing on the runtime that the process's
    /// other environments share. One cleanup hook per environment, not one per
    /// instance: an application that makes many instances keeps no hook, and no
    /// connection's memory, for each.
    pub fn close_when_env_ends(self: &Arc<Self>, env: &Env) -> napi::Result<()> {
        let first = MADE_HERE.with_borrow_mut(|made| {
            let first = made.is_none();
            let made = made.get_or_insert_with(Vec::new);
            if made.len() >= 64 && made.len().is_power_of_two() {
                made.retain(|connection| connection.strong_count() > 0);
            }
            made.push(Arc::downgrade(self));
            first
        });
        if first {
            env.add_env_cleanup_hook((), |()| {
                let made = MADE_HERE.take().unwrap_or_default();
                made.iter()
                    .filter_map(Weak::upgrade)
                    .for_each(Self::close_in_background);
            })?;
        }
        Ok(())
    }

    fn close_in_background(self: Arc<Self>) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(service) = self.service.get().cloned() {
            // The connection is dropped on the runtime, where its client may be.
            service.spawn(async move { self.close().await });
        }
    }

    /// Refuses every later call and closes the service if it was ever connected.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(service) = self.service.get() {
            service.close().await;
        }
    }

    /// Parsed by the driver (which also resolves `mongodb+srv` names).
    async fn client_options(&self) -> Result<ClientOptions, LockError> {
        let mut options = self.source_options().await?;
        if let Some(size) = self.max_pool_size {
            options.max_pool_size = Some(size);
        }
        Ok(options)
    }

    async fn source_options(&self) -> Result<ClientOptions, LockError> {
        match &self.source {
            Source::Url(url) => {
                let mut connection_string = ConnectionString::parse(url)?;
                #[allow(
                    deprecated,
                    reason = "the Rust driver has no socket timeout and refuses the option; \
                              the Node driver's is off by default: accept it, as Node does"
                )]
                {
                    connection_string.socket_timeout = None;
                }
                let mut options = ClientOptions::parse(connection_string).await?;
                options.connect_timeout = options.connect_timeout.or(self.connect_timeout);
                Ok(options)
            }
            Source::NodeClient(settings) => {
                let mut options = ClientOptions::parse(settings.connection_string.clone()).await?;
                options.server_api = settings.server_api.clone();
                Ok(options)
            }
        }
    }
}

/// Follows the servers' descriptions: a server marked unknown because it refused our
/// credentials sets `refused`; one known again clears it.
fn watch_refusals(refused: Arc<watch::Sender<Option<DriverError>>>) -> EventHandler<SdamEvent> {
    EventHandler::callback(move |event| {
        let SdamEvent::ServerDescriptionChanged(change) = event else {
            return;
        };
        match change.new_description.error() {
            Some(error) if matches!(*error.kind, ErrorKind::Authentication { .. }) => {
                refused.send_replace(Some(error.clone()));
            }
            Some(_) => {}
            None => {
                refused.send_replace(None);
            }
        }
    })
}

/// What of a connection string must never appear in an error: the password as the
/// driver decodes it, as written, and, for a string the driver cannot parse, its pieces
/// between URL delimiters (a driver error may quote the part before a stray `?` or `/`).
pub(crate) fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    if let Some(password) = ConnectionString::parse(url)
        .ok()
        .and_then(|c| c.credential)
        .and_then(|c| c.password)
    {
        secrets.push(password);
    }
    let written = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password);
    if let Some(written) = written {
        secrets.push(written.to_owned());
        secrets.extend(
            written
                .split(|c| "/?#[]@:,;&=".contains(c))
                .filter(|piece| piece.len() >= 4 && *piece != written)
                .map(str::to_owned),
        );
    }
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    secrets
}

#[cfg(test)]
mod tests {
    use super::url_secrets;
    use lock_core::mongodb::options::ConnectionString;

    #[test]
    fn finds_the_password_decoded_as_written_and_in_pieces() {
        assert_eq!(
            url_secrets("mongodb://u:p%40ss@h:1/db"),
            vec!["p%40ss".to_owned(), "p@ss".to_owned()]
        );
        assert_eq!(
            url_secrets("mongodb://u:hunter22?tail@h:1/db"),
            vec![
                "hunter22?tail".to_owned(),
                "hunter22".to_owned(),
                "tail".to_owned()
            ]
        );
        assert!(url_secrets("mongodb://h:1/db").is_empty());
    }

    #[test]
    fn a_driver_message_that_quotes_the_password_is_redacted() {
        // A stray `?` ends the host list early, so the driver quotes `someone:hunter22`
        // as a server address it cannot parse.
        let url = "mongodb://someone:hunter22?tail@127.0.0.1:1/";
        let message = ConnectionString::parse(url).unwrap_err().to_string();
        assert!(message.contains("hunter22"), "{message}");
        let redacted = crate::errors::redact(&message, &url_secrets(url));
        assert!(!redacted.contains("hunter22"), "{redacted}");
    }
}
