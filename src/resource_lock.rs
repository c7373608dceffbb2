//! The `ResourceLock` class and its constructor; each method lives in its own file.

use std::future::Future;
use std::sync::Arc;

use lock_core::LockError;
use napi::bindgen_prelude::{PromiseRaw, ToNapiValue};
use napi::{Env, Unknown, ValueType};
use napi_derive::napi;

use crate::connection::{Connection, Source};
use crate::errors;
use crate::node_client::{self, CloseClient};
use crate::options;
use crate::promise::{self, Failure};

/// Creates lock documents in the `_locks` collection and runs functions while holding
/// a lock. A drop-in replacement for `ResourceLock` of `@discue/mongodb-resource-client`.
#[napi]
pub struct ResourceLock {
    pub(crate) connection: Arc<Connection>,
    /// The caller's `MongoClient`, closed by `close()` as the original does.
    pub(crate) node_client: Option<CloseClient>,
}

#[napi]
impl ResourceLock {
    /// `client`: a `MongoClient` of the `mongodb` package (driver 5, 6 or 7), whose
    /// settings the addon's own connection copies; or `url`, a connection string.
    /// The database is `DSQ_MONGODB_RESOURCE_CLIENT_DB_NAME`, else `databaseName`,
    /// else the client's default database, else `test`; an empty name counts as none,
    /// as the Node driver's `client.db('')`, which the original calls, takes it.
    #[napi(constructor, ts_args_type = "options: ResourceLockOptions")]
    pub fn new(env: Env, options: Option<Unknown<'_>>) -> napi::Result<Self> {
        let built = Self::build(&env, options)
            .map_err(|refusal| errors::to_napi(&env, refusal.error, &refusal.secrets))?;
        built.connection.close_when_env_ends(&env)?;
        Ok(built)
    }

    fn build(env: &Env, options: Option<Unknown<'_>>) -> Result<Self, Refusal> {
        if options
            .is_none_or(|o| matches!(o.get_type(), Ok(ValueType::Undefined) | Ok(ValueType::Null)))
        {
            return Err(LockError::type_error(
                "Configuration Error. `client` needs to be set: pass options with a MongoClient as `client` or a connection string as `url`",
            )
            .into());
        }
        let o = options::options_object(options, "options")?;
        let o = o.as_ref();
        let url = options::string(o, "url")?;
        let database = std::env::var("DSQ_MONGODB_RESOURCE_CLIENT_DB_NAME")
            .ok()
            .filter(|name| !name.is_empty())
            .or(options::string(o, "databaseName")?.filter(|name| !name.is_empty()));
        let connect_timeout = options::millis(o, "connectTimeout", 10_000.0, false)?;
        let write_concern = options::write_concern(o)?;
        let (source, node_client) = match options::field(o, "client")? {
            Some(client) if client.get_type().ok() != Some(ValueType::Null) => {
                if client.get_type().ok() != Some(ValueType::Object) {
                    return Err(LockError::type_error("options.client must be a MongoClient of the mongodb package").into());
                }
                let client = unsafe { client.cast::<napi::bindgen_prelude::Object>() }
                    .map_err(|_| LockError::type_error("options.client must be a MongoClient"))?;
                let (settings, close, warnings) = node_client::read(&client)?;
                for warning in warnings {
                    node_client::emit_warning(env, &warning);
                }
                (Source::NodeClient(Box::new(settings)), Some(close))
            }
            _ => match url {
                Some(url) => (url_source(url)?, None),
                None => {
                    return Err(LockError::type_error(
                        "Configuration Error. `client` needs to be set: pass a MongoClient as `client` or a connection string as `url`",
                    )
                    .into())
                }
            },
        };
        let max_pool_size = options::pool_size(o)?;
        let connection = Arc::new(Connection::new(
            source,
            database,
            connect_timeout,
            write_concern,
            max_pool_size,
        ));
        prepare_in_background(&connection);
        Ok(ResourceLock {
            connection,
            node_client,
        })
    }

    /// Runs `work` on the tokio runtime and settles the returned promise (`promise.rs`).
    pub(crate) fn run<'env, T, V, F, C>(
        &self,
        env: &'env Env,
        work: F,
        convert: C,
    ) -> napi::Result<PromiseRaw<'env, V>>
    where
        T: Send + 'static,
        V: ToNapiValue,
        F: Future<Output = Result<T, Failure>> + Send + 'static,
        C: FnOnce(&'env Env, T) -> napi::Result<V> + 'static,
    {
        promise::settle(env, &self.connection, work, convert, |_| {})
    }
}

/// Why the constructor throws, with what its message must not show.
struct Refusal {
    error: LockError,
    secrets: Vec<String>,
}

impl From<LockError> for Refusal {
    fn from(error: LockError) -> Self {
        Refusal {
            error,
            secrets: Vec::new(),
        }
    }
}

/// A connection string parsed now, as `new MongoClient(url)` parses it, so that a
/// malformed one throws here and not at every call. The driver's message may quote a
/// part of the string, the password among it.
fn url_source(url: String) -> Result<Source, Refusal> {
    let Err(refused) = mongodb::options::ConnectionString::parse(&url) else {
        return Ok(Source::Url(url));
    };
    let message = match &*refused.kind {
        mongodb::error::ErrorKind::InvalidArgument { message, .. } => message.clone(),
        _ => refused.to_string(),
    };
    Err(Refusal {
        error: LockError::ConnectionString(message),
        secrets: crate::connection::url_secrets(&url),
    })
}

/// Connects and creates the indexes right away, as the original starts index creation
/// in its constructor, so that the first lock does not pay for it. Failures are left
/// for the first call to report; every lock still waits for the indexes. Not cut short:
/// the driver's `serverSelectionTimeoutMS` ends it, and a call waiting for it then gets
/// its failure instead of trying again (`ensure_indexes`).
fn prepare_in_background(connection: &Arc<Connection>) {
    let connection = connection.clone();
    napi::bindgen_prelude::spawn(async move {
        if let Ok(service) = connection.service().await {
            let _ = service.ensure_indexes().await;
        }
    });
}
