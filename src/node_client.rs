//! Reading the settings of a Node.js `MongoClient` (driver 5, 6 and 7).
//!
//! The addon opens its own Rust connection with the caller's settings, read from the
//! public `client.options` (the merged result of the URL and the options given in
//! code; `client.s.url` alone would lose the latter) straight into the driver's own
//! types: a `ConnectionString` (hosts or SRV name, credential, TLS, write concern,
//! timeouts, compressors, ...) and a `ServerApi`. Settings that the Rust driver cannot
//! honour are refused with a clear error, never dropped silently.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use lock_core::mongodb::bson::Document;
use lock_core::mongodb::options::{
    Acknowledgment, AuthMechanism, Compressor, ConnectionString, Credential, HostInfo,
    ServerAddress, ServerApi, ServerApiVersion, Tls, TlsOptions, WriteConcern,
};
use napi::bindgen_prelude::{Array, FromNapiValue, Function, FunctionRef, JsObjectValue, Object};
use napi::{Env, Unknown, ValueType};

use lock_core::LockError;

/// The lock connection's pool when the client's is larger (Node's default is 100): lock
/// calls are short, and every `ResourceLock` has a pool of its own.
pub const LOCK_POOL_SIZE: u32 = 10;

/// What we carry over from the Node client, in the driver's types. `Debug` shows no
/// password: the driver's `Credential` redacts itself.
#[derive(Debug, Clone)]
pub struct NodeClientSettings {
    pub connection_string: ConnectionString,
    pub server_api: Option<ServerApi>,
}

impl NodeClientSettings {
    /// The password, to keep it out of error messages.
    pub fn password(&self) -> Option<&str> {
        self.connection_string
            .credential
            .as_ref()
            .and_then(|c| c.password.as_deref())
    }
}

/// `client.close`, bound to the client; `close()` calls it as the original does
/// (`callback.rs`), so what it throws or rejects with becomes `close()`'s rejection.
pub type CloseClient = FunctionRef<Unknown<'static>, Unknown<'static>>;

/// Reads `client`. Returns the settings, its `close`, and warnings to emit.
pub fn read(
    client: &Object<'_>,
) -> Result<(NodeClientSettings, CloseClient, Vec<String>), LockError> {
    let not_a_client =
        || LockError::type_error("options.client must be a MongoClient of the mongodb package");
    let options = object(client, "options").ok_or_else(not_a_client)?;
    let close = close_function(client).ok_or_else(not_a_client)?;
    refuse_what_cannot_be_carried(&options)?;

    let mut c = ConnectionString::default();
    c.host_info = host_info(&options).ok_or_else(not_a_client)?;
    c.credential = credential(&options)?;
    c.default_database = string(&options, "dbName");
    c.replica_set = string(&options, "replicaSet");
    c.direct_connection = boolean(&options, "directConnection");
    c.load_balanced = boolean(&options, "loadBalanced");
    c.app_name = string(&options, "appName");
    c.tls = tls(&options)?;
    c.write_concern = object(&options, "writeConcern").and_then(|wc| write_concern(&wc));
    c.compressors = compressors(&options);
    c.connect_timeout = millis(&options, "connectTimeoutMS");
    c.server_selection_timeout = millis(&options, "serverSelectionTimeoutMS");
    c.heartbeat_frequency = millis(&options, "heartbeatFrequencyMS");
    c.local_threshold = millis(&options, "localThresholdMS");
    // Node's 0 means "no limit" for both, which the Rust driver does not accept.
    c.max_idle_time = millis(&options, "maxIdleTimeMS").filter(|d| !d.is_zero());
    c.max_pool_size = Some(lock_pool_size(number(&options, "maxPoolSize")));
    c.min_pool_size = count(&options, "minPoolSize").map(|n| n.min(LOCK_POOL_SIZE));
    c.max_connecting = count(&options, "maxConnecting").filter(|n| *n > 0);
    c.retry_writes = boolean(&options, "retryWrites");
    c.retry_reads = boolean(&options, "retryReads");
    let settings = NodeClientSettings {
        connection_string: c,
        server_api: server_api(&options)?,
    };
    Ok((settings, close, Vec::new()))
}

/// The client's pool size, capped for lock traffic; Node's 0 means "unlimited".
pub fn lock_pool_size(client: Option<f64>) -> u32 {
    match client {
        Some(n) if n >= 1.0 => (n as u32).min(LOCK_POOL_SIZE),
        _ => LOCK_POOL_SIZE,
    }
}

fn close_function(client: &Object<'_>) -> Option<CloseClient> {
    let close: Function<Unknown, Unknown> = client.get_named_property("close").ok()?;
    close.bind(client).and_then(|bound| bound.create_ref()).ok()
}

fn refuse_what_cannot_be_carried(options: &Object<'_>) -> Result<(), LockError> {
    if object(options, "autoEncryption").is_some_and(|e| property_names(&e) > 0) {
        return Err(unsupported(
            "autoEncryption (client-side field level encryption)",
        ));
    }
    if boolean(options, "tlsAllowInvalidHostnames") == Some(true)
        || boolean(options, "tlsInsecure") == Some(true)
    {
        return Err(unsupported("tlsAllowInvalidHostnames"));
    }
    // Drivers 6 and 7 turn tlsAllowInvalidHostnames / tlsInsecure into a no-op
    // checkServerIdentity and keep no flag: the message names all three.
    if get(options, "checkServerIdentity")
        .is_some_and(|f| f.get_type().ok() == Some(ValueType::Function))
    {
        return Err(unsupported(
            "a checkServerIdentity function (or tlsAllowInvalidHostnames / tlsInsecure, which set one)",
        ));
    }
    if string(options, "proxyHost").is_some() {
        return Err(unsupported("a SOCKS5 proxy (proxyHost)"));
    }
    let no_crl = "tlsCRLFile (the Rust driver checks no revocation lists)";
    let no_password = "tlsCertificateKeyFilePassword";
    for (name, what) in [
        ("tlsCRLFile", no_crl),
        ("crl", no_crl),
        ("tlsCertificateKeyFilePassword", no_password),
        ("passphrase", no_password),
    ] {
        if get(options, name).is_some() {
            return Err(unsupported(what));
        }
    }
    // Driver 5 keeps certificates as contents only; the Rust driver reads files.
    for (contents, file) in [
        ("ca", "tlsCAFile"),
        ("cert", "tlsCertificateKeyFile"),
        ("key", "tlsCertificateKeyFile"),
    ] {
        if get(options, contents).is_some() && string(options, file).is_none() {
            return Err(unsupported(&format!(
                "TLS `{contents}` given as contents rather than as {file}"
            )));
        }
    }
    Ok(())
}

fn host_info(options: &Object<'_>) -> Option<HostInfo> {
    if let Some(srv) = string(options, "srvHost") {
        return Some(HostInfo::DnsRecord(srv));
    }
    let list = get(options, "hosts")?;
    let array = unsafe { list.cast::<Array>() }.ok()?;
    let hosts: Vec<ServerAddress> = (0..array.len())
        .filter_map(|index| array.get::<Object>(index).ok().flatten())
        .filter_map(|entry| {
            if let Some(path) = string(&entry, "socketPath") {
                return unix_socket(path);
            }
            Some(ServerAddress::Tcp {
                host: string(&entry, "host")?,
                port: number(&entry, "port").map(|p| p as u16),
            })
        })
        .collect();
    (!hosts.is_empty()).then_some(HostInfo::HostIdentifiers(hosts))
}

#[cfg(unix)]
fn unix_socket(path: String) -> Option<ServerAddress> {
    Some(ServerAddress::Unix {
        path: PathBuf::from(path),
    })
}

#[cfg(not(unix))]
fn unix_socket(_path: String) -> Option<ServerAddress> {
    None
}

fn credential(options: &Object<'_>) -> Result<Option<Credential>, LockError> {
    let Some(c) = object(options, "credentials") else {
        return Ok(None);
    };
    let mechanism = match string(&c, "mechanism").filter(|m| m != "DEFAULT") {
        None => None,
        Some(m) if matches!(m.as_str(), "MONGODB-AWS" | "GSSAPI" | "MONGODB-OIDC") => {
            return Err(unsupported(&format!("authMechanism {m}")));
        }
        Some(m) => Some(
            AuthMechanism::from_str(&m).map_err(|_| unsupported(&format!("authMechanism {m}")))?,
        ),
    };
    let username = string(&c, "username").filter(|s| !s.is_empty());
    if username.is_none() && mechanism.is_none() {
        return Ok(None);
    }
    let properties = object(&c, "mechanismProperties").filter(|p| property_names(p) > 0);
    if properties.is_some() {
        return Err(unsupported("authMechanismProperties"));
    }
    Ok(Some(
        Credential::builder()
            .username(username)
            .password(string(&c, "password").filter(|s| !s.is_empty()))
            .source(string(&c, "source"))
            .mechanism(mechanism)
            .mechanism_properties(None::<Document>)
            .build(),
    ))
}

/// With SRV the Rust driver turns TLS on itself unless told otherwise, as Node does.
fn tls(options: &Object<'_>) -> Result<Option<Tls>, LockError> {
    Ok(match boolean(options, "tls") {
        None => None,
        Some(false) => Some(Tls::Disabled),
        Some(true) => Some(Tls::Enabled(
            TlsOptions::builder()
                .ca_file_path(string(options, "tlsCAFile").map(PathBuf::from))
                .cert_key_file_path(string(options, "tlsCertificateKeyFile").map(PathBuf::from))
                .allow_invalid_certificates(boolean(options, "tlsAllowInvalidCertificates"))
                .build(),
        )),
    })
}

fn server_api(options: &Object<'_>) -> Result<Option<ServerApi>, LockError> {
    let Some(api) = object(options, "serverApi") else {
        return Ok(None);
    };
    let version = string(&api, "version").unwrap_or_else(|| "1".into());
    if version != "1" {
        return Err(unsupported(&format!("serverApi version {version}")));
    }
    Ok(Some(
        ServerApi::builder()
            .version(ServerApiVersion::V1)
            .strict(boolean(&api, "strict"))
            .deprecation_errors(boolean(&api, "deprecationErrors"))
            .build(),
    ))
}

fn write_concern(wc: &Object<'_>) -> Option<WriteConcern> {
    let w = get(wc, "w").and_then(|w| match w.get_type().ok()? {
        ValueType::Number => Some(Acknowledgment::Nodes(
            unsafe { w.cast::<f64>() }.ok()? as u32
        )),
        ValueType::String => Some(Acknowledgment::from(unsafe { w.cast::<String>() }.ok()?)),
        _ => None,
    });
    let journal = boolean(wc, "journal").or_else(|| boolean(wc, "j"));
    let timeout = millis(wc, "wtimeoutMS").or_else(|| millis(wc, "wtimeout"));
    (w.is_some() || journal.is_some()).then(|| {
        WriteConcern::builder()
            .w(w)
            .journal(journal)
            .w_timeout(timeout)
            .build()
    })
}

/// `compressors: ['zstd', 'zlib']` (with `zlibCompressionLevel`), in the client's order.
fn compressors(options: &Object<'_>) -> Option<Vec<Compressor>> {
    let level = number(options, "zlibCompressionLevel")
        .filter(|l| *l >= 0.0)
        .map(|l| l as u32);
    let list: Vec<Compressor> = get(options, "compressors")
        .map(strings)
        .unwrap_or_default()
        .iter()
        .filter_map(|name| match name.as_str() {
            "zlib" => Some(Compressor::Zlib { level }),
            "snappy" => Some(Compressor::Snappy),
            "zstd" => Some(Compressor::Zstd { level: None }),
            _ => None,
        })
        .collect();
    (!list.is_empty()).then_some(list)
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

fn count(parent: &Object<'_>, name: &str) -> Option<u32> {
    number(parent, name)
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| n as u32)
}

fn millis(parent: &Object<'_>, name: &str) -> Option<Duration> {
    number(parent, name)
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|ms| Duration::from_millis(ms as u64))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_has_no_password() {
        let mut c = ConnectionString::default();
        c.credential = Some(
            Credential::builder()
                .username("someone".to_owned())
                .password("s3cret-pa55".to_owned())
                .build(),
        );
        let settings = NodeClientSettings {
            connection_string: c,
            server_api: None,
        };
        assert_eq!(settings.password(), Some("s3cret-pa55"));
        let debug = format!("{settings:?} {settings:#?}");
        assert!(!debug.contains("s3cret-pa55"), "{debug}");
    }

    #[test]
    fn the_lock_pool_is_capped_and_never_unlimited() {
        assert_eq!(lock_pool_size(None), LOCK_POOL_SIZE);
        assert_eq!(lock_pool_size(Some(100.0)), LOCK_POOL_SIZE);
        assert_eq!(lock_pool_size(Some(0.0)), LOCK_POOL_SIZE);
        assert_eq!(lock_pool_size(Some(3.0)), 3);
    }
}
