//! Reading the settings of a Node.js `MongoClient` (driver 5, 6 and 7).
//!
//! The addon opens its own Rust connection with the caller's settings, read from the
//! public `client.options` (the merged result of the URL and the options given in
//! code; `client.s.url` alone would lose the latter). Settings that the Rust driver
//! cannot honour are refused with a clear error, or, where they change no result
//! (compression), reported once with `process.emitWarning`.

use napi::bindgen_prelude::{Array, FromNapiValue, Function, JsObjectValue, Object, Promise};
use napi::threadsafe_function::ThreadsafeFunction;
use napi::{Env, Unknown, ValueType};

use lock_core::LockError;

#[derive(Debug, Default, Clone)]
pub struct Credential {
    pub username: Option<String>,
    pub password: Option<String>,
    pub source: Option<String>,
    pub mechanism: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct ServerApi {
    pub version: String,
    pub strict: Option<bool>,
    pub deprecation_errors: Option<bool>,
}

#[derive(Debug, Clone)]
pub enum Host {
    Tcp { host: String, port: Option<u16> },
    Unix { path: String },
}

/// What we carry over from the Node client.
#[derive(Debug, Default, Clone)]
pub struct NodeClientSettings {
    pub hosts: Vec<Host>,
    pub srv_host: Option<String>,
    pub credential: Option<Credential>,
    pub db_name: Option<String>,
    pub replica_set: Option<String>,
    pub direct_connection: Option<bool>,
    pub load_balanced: Option<bool>,
    pub app_name: Option<String>,
    pub tls: Option<bool>,
    pub tls_ca_file: Option<String>,
    pub tls_certificate_key_file: Option<String>,
    pub tls_allow_invalid_certificates: Option<bool>,
    pub tls_allow_invalid_hostnames: Option<bool>,
    pub server_api: Option<ServerApi>,
    pub write_concern_w: Option<WriteConcernW>,
    pub write_concern_journal: Option<bool>,
    pub write_concern_timeout_ms: Option<f64>,
    pub connect_timeout_ms: Option<f64>,
    pub server_selection_timeout_ms: Option<f64>,
    pub max_pool_size: Option<f64>,
    pub min_pool_size: Option<f64>,
    pub retry_writes: Option<bool>,
    pub retry_reads: Option<bool>,
}

#[derive(Debug, Clone)]
pub enum WriteConcernW {
    Nodes(u32),
    Tag(String),
}

/// `client.close()`, callable from any thread. Weak: it never keeps Node alive.
pub type CloseClient =
    std::sync::Arc<ThreadsafeFunction<(), Promise<()>, (), napi::Status, false, true>>;

/// Reads `client`. Returns the settings, its `close`, and warnings to emit.
pub fn read(
    client: &Object<'_>,
) -> Result<(NodeClientSettings, CloseClient, Vec<String>), LockError> {
    let not_a_client =
        || LockError::type_error("options.client must be a MongoClient of the mongodb package");
    let options = object(client, "options").ok_or_else(not_a_client)?;
    let close: Function<(), Promise<()>> = client
        .get_named_property::<Function<(), Promise<()>>>("close")
        .map_err(|_| not_a_client())?;
    let close = close
        .bind(client)
        .and_then(|bound| {
            bound
                .build_threadsafe_function::<()>()
                .weak::<true>()
                .build()
        })
        .map(std::sync::Arc::new)
        .map_err(|_| not_a_client())?;

    let mut warnings = Vec::new();
    if let Some(encryption) = object(&options, "autoEncryption") {
        if property_names(&encryption) > 0 {
            return Err(unsupported(
                "autoEncryption (client-side field level encryption)",
            ));
        }
    }
    if let Some(compressors) = get(&options, "compressors") {
        let names = strings(compressors);
        if names.iter().any(|c| c != "none") {
            warnings.push(format!(
                "mongodb-resource-lock: the lock connection does not compress (client compressors {names:?} are not carried over)"
            ));
        }
    }

    let credential = match object(&options, "credentials") {
        None => None,
        Some(c) => {
            let mechanism = string(&c, "mechanism");
            if let Some(m) = mechanism.as_deref() {
                if matches!(m, "MONGODB-AWS" | "GSSAPI" | "MONGODB-OIDC") {
                    return Err(unsupported(&format!("authMechanism {m}")));
                }
            }
            let credential = Credential {
                username: string(&c, "username").filter(|s| !s.is_empty()),
                password: string(&c, "password").filter(|s| !s.is_empty()),
                source: string(&c, "source"),
                mechanism: mechanism.filter(|m| m != "DEFAULT"),
            };
            (credential.username.is_some() || credential.mechanism.is_some()).then_some(credential)
        }
    };

    let mut hosts = Vec::new();
    if let Some(list) = get(&options, "hosts") {
        if let Ok(array) = unsafe { list.cast::<Array>() } {
            for index in 0..array.len() {
                let Ok(Some(entry)) = array.get::<Object>(index) else {
                    continue;
                };
                if let Some(path) = string(&entry, "socketPath") {
                    hosts.push(Host::Unix { path });
                } else if let Some(host) = string(&entry, "host") {
                    let port = number(&entry, "port").map(|p| p as u16);
                    hosts.push(Host::Tcp { host, port });
                }
            }
        }
    }

    let server_api = object(&options, "serverApi").map(|api| ServerApi {
        version: string(&api, "version").unwrap_or_else(|| "1".into()),
        strict: boolean(&api, "strict"),
        deprecation_errors: boolean(&api, "deprecationErrors"),
    });
    let write_concern = object(&options, "writeConcern");
    let write_concern_w = write_concern.as_ref().and_then(|wc| {
        let w = get(wc, "w")?;
        match w.get_type().ok()? {
            ValueType::Number => {
                Some(WriteConcernW::Nodes(unsafe { w.cast::<f64>() }.ok()? as u32))
            }
            ValueType::String => Some(WriteConcernW::Tag(unsafe { w.cast::<String>() }.ok()?)),
            _ => None,
        }
    });

    let settings = NodeClientSettings {
        hosts,
        srv_host: string(&options, "srvHost"),
        credential,
        db_name: string(&options, "dbName"),
        replica_set: string(&options, "replicaSet"),
        direct_connection: boolean(&options, "directConnection"),
        load_balanced: boolean(&options, "loadBalanced"),
        app_name: string(&options, "appName"),
        tls: boolean(&options, "tls"),
        tls_ca_file: string(&options, "tlsCAFile"),
        tls_certificate_key_file: string(&options, "tlsCertificateKeyFile"),
        tls_allow_invalid_certificates: boolean(&options, "tlsAllowInvalidCertificates"),
        tls_allow_invalid_hostnames: boolean(&options, "tlsAllowInvalidHostnames"),
        server_api,
        write_concern_journal: write_concern
            .as_ref()
            .and_then(|wc| boolean(wc, "journal").or_else(|| boolean(wc, "j"))),
        write_concern_timeout_ms: write_concern
            .as_ref()
            .and_then(|wc| number(wc, "wtimeoutMS").or_else(|| number(wc, "wtimeout"))),
        write_concern_w,
        connect_timeout_ms: number(&options, "connectTimeoutMS"),
        server_selection_timeout_ms: number(&options, "serverSelectionTimeoutMS"),
        max_pool_size: number(&options, "maxPoolSize"),
        min_pool_size: number(&options, "minPoolSize"),
        retry_writes: boolean(&options, "retryWrites"),
        retry_reads: boolean(&options, "retryReads"),
    };
    if settings.hosts.is_empty() && settings.srv_host.is_none() {
        return Err(not_a_client());
    }
    Ok((settings, close, warnings))
}

/// Emits a Node.js process warning, as libraries do for settings they ignore.
pub fn emit_warning(env: &Env, message: &str) {
    let emit = || -> napi::Result<()> {
        let process: Object = env.get_global()?.get_named_property("process")?;
        let emit_warning: Function<(String, String), Unknown> =
            process.get_named_property("emitWarning")?;
        emit_warning.apply(
            process,
            (message.to_owned(), "MongoResourceLockWarning".to_owned()),
        )?;
        Ok(())
    };
    let _ = emit();
}

fn unsupported(what: &str) -> LockError {
    LockError::Configuration(format!(
        "The MongoClient uses {what}, which mongodb-resource-lock cannot carry over to its own connection; pass a client without it (or a url) for the locks"
    ))
}

fn get<'e>(object: &Object<'e>, name: &str) -> Option<Unknown<'e>> {
    let value: Unknown = object.get_named_property(name).ok()?;
    match value.get_type().ok()? {
        ValueType::Undefined | ValueType::Null => None,
        _ => Some(value),
    }
}

/// The property `name` if it has the JavaScript type `expected`; anything else is
/// treated as absent, as the driver itself would not have set it.
fn typed<'e, T: FromNapiValue + 'e>(
    parent: &Object<'e>,
    name: &str,
    expected: ValueType,
) -> Option<T> {
    let value = get(parent, name)?;
    if value.get_type().ok()? != expected {
        return None;
    }
    unsafe { value.cast::<T>() }.ok()
}

fn object<'e>(parent: &Object<'e>, name: &str) -> Option<Object<'e>> {
    typed(parent, name, ValueType::Object)
}

fn string(parent: &Object<'_>, name: &str) -> Option<String> {
    typed(parent, name, ValueType::String)
}

fn number(parent: &Object<'_>, name: &str) -> Option<f64> {
    typed(parent, name, ValueType::Number)
}

fn boolean(parent: &Object<'_>, name: &str) -> Option<bool> {
    typed(parent, name, ValueType::Boolean)
}

fn strings(value: Unknown<'_>) -> Vec<String> {
    let Ok(array) = (unsafe { value.cast::<Array>() }) else {
        return Vec::new();
    };
    (0..array.len())
        .filter_map(|i| array.get::<String>(i).ok().flatten())
        .collect()
}

fn property_names(object: &Object<'_>) -> u32 {
    object
        .get_property_names()
        .and_then(|names| names.get_array_length())
        .unwrap_or(0)
}
