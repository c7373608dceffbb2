//! The one error type of the core, a leaf that depends on nothing else in the crate.
//! The binding maps each variant, in one place, to the JavaScript error that callers
//! of the original class already catch. `Clone`, so that one failure can be both the
//! reason a hold's signal aborted and the rejection of the call.

use mongodb::bson::Document;
use mongodb::error::{ErrorKind, WriteFailure};

/// MongoDB's duplicate key error code.
pub const DUPLICATE_KEY: i32 = 11000;

/// What is wrong with a bad argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Argument {
    /// Not of an accepted type.
    Type,
    /// Of the right type, but not an accepted value.
    Value,
    /// A number outside the accepted range.
    Range,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LockError {
    /// A bad argument.
    #[error("{message}")]
    InvalidArgument { problem: Argument, message: String },

    /// The key is already locked; carries the server's own E11000 details so the
    /// binding can rebuild the `MongoServerError` that the original surfaced.
    #[error("{message}")]
    DuplicateKey {
        message: String,
        key_pattern: Box<Document>,
        key_value: Box<Document>,
    },

    /// `unlock` found nothing to delete; `ids` is `String(resourceIds)`.
    #[error("Was not able to delete {ids}.")]
    NotDeleted { ids: String },

    /// `waitTimeout` passed before the lock could be taken.
    #[error("Unable to establish lock.")]
    WaitTimeout,

    /// `lockTimeout` passed while the callback was still running.
    #[error("Lock interrupted by timeout")]
    LockTimeout,

    /// The lease could not be renewed or the lock was taken over; `cause` is the
    /// failure that kept the lease from being renewed, if any.
    #[error("Lock interrupted: {reason}")]
    LockLost {
        reason: String,
        #[source]
        cause: Option<Box<LockError>>,
    },

    /// The caller's `AbortSignal` fired while waiting.
    #[error("The operation was aborted")]
    Aborted,

    /// `close()` was called.
    #[error("ResourceLock is closed")]
    Closed,

    /// A connection setting that cannot be honoured.
    #[error("{0}")]
    Configuration(String),

    /// A connection string the driver cannot parse; the driver's words.
    #[error("{0}")]
    ConnectionString(String),

    /// Any other failure reported by the driver or the server.
    #[error("{0}")]
    Mongo(#[from] mongodb::error::Error),
}

impl LockError {
    pub fn type_error(message: impl Into<String>) -> Self {
        LockError::InvalidArgument {
            problem: Argument::Type,
            message: message.into(),
        }
    }

    pub fn value_error(message: impl Into<String>) -> Self {
        LockError::InvalidArgument {
            problem: Argument::Value,
            message: message.into(),
        }
    }

    /// `Was not able to delete <ids>.`, `ids` printed as JavaScript's `String()` does.
    pub fn not_deleted(ids: impl Into<String>) -> Self {
        LockError::NotDeleted { ids: ids.into() }
    }

    pub fn lost(reason: impl Into<String>) -> Self {
        LockError::LockLost {
            reason: reason.into(),
            cause: None,
        }
    }

    pub fn lost_because(reason: impl Into<String>, cause: LockError) -> Self {
        LockError::LockLost {
            reason: reason.into(),
            cause: Some(Box::new(cause)),
        }
    }

    pub fn range_error(message: impl Into<String>) -> Self {
        LockError::InvalidArgument {
            problem: Argument::Range,
            message: message.into(),
        }
    }

    /// The server's numeric error code, where there is one.
    pub fn server_code(&self) -> Option<i32> {
        match self {
            LockError::DuplicateKey { .. } => Some(DUPLICATE_KEY),
            LockError::Mongo(e) => match &*e.kind {
                ErrorKind::Command(c) => Some(c.code),
                ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
                ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
                _ => None,
            },
            _ => None,
        }
    }
}

pub type Result<T, E = LockError> = std::result::Result<T, E>;
