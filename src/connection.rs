//! The addon's own connection: built on first use from a connection string or from a
//! Node `MongoClient`'s settings, then shared by every call of one `ResourceLock`.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lock_core::mongodb::options::{
    Acknowledgment, AuthMechanism, ClientOptions, Credential, ServerApi, ServerApiVersion, Tls,
    TlsOptions, WriteConcern,
};
use lock_core::mongodb::Client;
use lock_core::{LockError, LockService};
use tokio::sync::OnceCell;

use crate::node_client::{Host, NodeClientSettings, WriteConcernW};

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
    service: OnceCell<Arc<LockService>>,
    closed: AtomicBool,
    /// Passwords, removed from every error message.
    pub secrets: Vec<String>,
}

impl Connection {
    pub fn new(
        source: Source,
        database: Option<String>,
        connect_timeout: Option<Duration>,
        write_concern: Option<WriteConcern>,
    ) -> Self {
        let secrets = match &source {
            Source::NodeClient(settings) => settings
                .credential
                .iter()
                .filter_map(|c| c.password.clone())
                .collect(),
            Source::Url(url) => url_password(url)
                .map(|encoded| vec![percent_decode(&encoded), encoded])
                .unwrap_or_default(),
        };
        Connection {
            source,
            database,
            connect_timeout,
            write_concern,
            service: OnceCell::new(),
            closed: AtomicBool::new(false),
            secrets,
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
                let options = self.client_options().await?;
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

    /// Refuses every later call and closes the service if it was ever connected.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(service) = self.service.get() {
            service.close().await;
        }
    }

    async fn client_options(&self) -> Result<ClientOptions, LockError> {
        match &self.source {
            Source::Url(url) => {
                let mut options = ClientOptions::parse(url).await?;
                if options.connect_timeout.is_none() {
                    options.connect_timeout = self.connect_timeout;
                }
                Ok(options)
            }
            Source::NodeClient(settings) => from_node_client(settings).await,
        }
    }
}

async fn from_node_client(s: &NodeClientSettings) -> Result<ClientOptions, LockError> {
    let uri = match &s.srv_host {
        Some(srv) => format!("mongodb+srv://{srv}/"),
        None => {
            let hosts: Vec<String> = s
                .hosts
                .iter()
                .map(|h| match h {
                    Host::Tcp { host, port } => {
                        let host = if host.contains(':') {
                            format!("[{host}]")
                        } else {
                            host.clone()
                        };
                        match port {
                            Some(port) => format!("{host}:{port}"),
                            None => host,
                        }
                    }
                    Host::Unix { path } => path.replace('/', "%2F"),
                })
                .collect();
            format!("mongodb://{}/", hosts.join(","))
        }
    };
    let mut o = ClientOptions::parse(uri).await?;
    if let Some(c) = &s.credential {
        let mechanism = match c.mechanism.as_deref() {
            Some(m) => Some(AuthMechanism::from_str(m).map_err(|_| {
                LockError::Configuration(format!(
                    "authMechanism {m} is not supported by mongodb-resource-lock"
                ))
            })?),
            None => None,
        };
        o.credential = Some(
            Credential::builder()
                .username(c.username.clone())
                .password(c.password.clone())
                .source(c.source.clone())
                .mechanism(mechanism)
                .build(),
        );
    }
    o.default_database = s.db_name.clone();
    o.repl_set_name = s.replica_set.clone();
    o.direct_connection = s.direct_connection;
    o.load_balanced = s.load_balanced;
    o.app_name = s.app_name.clone();
    if s.tls_allow_invalid_hostnames == Some(true) {
        return Err(LockError::Configuration(
            "The MongoClient uses tlsAllowInvalidHostnames, which mongodb-resource-lock cannot carry over to its own connection".into(),
        ));
    }
    // With SRV the Rust driver turns TLS on itself unless told otherwise, as Node does.
    if let Some(tls) = s.tls {
        o.tls = Some(if tls {
            Tls::Enabled(
                TlsOptions::builder()
                    .ca_file_path(s.tls_ca_file.clone().map(Into::into))
                    .cert_key_file_path(s.tls_certificate_key_file.clone().map(Into::into))
                    .allow_invalid_certificates(s.tls_allow_invalid_certificates)
                    .build(),
            )
        } else {
            Tls::Disabled
        });
    }
    if let Some(api) = &s.server_api {
        if api.version != "1" {
            return Err(LockError::Configuration(format!(
                "serverApi version {} is not supported by mongodb-resource-lock",
                api.version
            )));
        }
        o.server_api = Some(
            ServerApi::builder()
                .version(ServerApiVersion::V1)
                .strict(api.strict)
                .deprecation_errors(api.deprecation_errors)
                .build(),
        );
    }
    if s.write_concern_w.is_some() || s.write_concern_journal.is_some() {
        o.write_concern = Some(
            WriteConcern::builder()
                .w(s.write_concern_w.as_ref().map(|w| match w {
                    WriteConcernW::Nodes(n) => Acknowledgment::Nodes(*n),
                    WriteConcernW::Tag(t) if t == "majority" => Acknowledgment::Majority,
                    WriteConcernW::Tag(t) => Acknowledgment::Custom(t.clone()),
                }))
                .journal(s.write_concern_journal)
                .w_timeout(
                    s.write_concern_timeout_ms
                        .map(|ms| Duration::from_millis(ms as u64)),
                )
                .build(),
        );
    }
    // Node's defaults differ from the Rust driver's (30 s vs 10 s, pool 100 vs 10):
    // carry them explicitly so both connections behave alike.
    o.connect_timeout = s.connect_timeout_ms.map(millis);
    o.server_selection_timeout = s.server_selection_timeout_ms.map(millis);
    // Node's 0 means "unlimited", which the Rust driver refuses; leave its default.
    o.max_pool_size = s.max_pool_size.filter(|n| *n >= 1.0).map(|n| n as u32);
    o.min_pool_size = s.min_pool_size.map(|n| n as u32);
    o.retry_writes = s.retry_writes;
    o.retry_reads = s.retry_reads;
    Ok(o)
}

fn millis(ms: f64) -> Duration {
    Duration::from_millis(ms.max(0.0) as u64)
}

/// The password of `mongodb://user:password@host`, to keep it out of messages.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    Some(password.to_owned())
}

/// `%40` → `@`: connection strings carry the password percent-encoded.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::{percent_decode, url_password};

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("p%40ss%2"), "p@ss%2");
    }

    #[test]
    fn finds_the_password_of_a_url() {
        assert_eq!(
            url_password("mongodb://u:p%40ss@h:1/db").as_deref(),
            Some("p%40ss")
        );
        assert_eq!(url_password("mongodb://h:1/db"), None);
    }
}
