//! The one error type of the core. The binding maps each variant, in one place, to the
//! JavaScript error that callers of the original class already catch.

use mongodb::bson::{doc, Document};
use mongodb::error::{ErrorKind, WriteFailure};

use crate::key::{ids_to_string, LockKey, ResourceId};

/// MongoDB's duplicate key error code.
pub const DUPLICATE_KEY: i32 = 11000;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A bad argument: a `RangeError` when `range` is set, else a `TypeError`.
    #[error("{message}")]
    InvalidArgument { range: bool, message: String },

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

    /// The lease could not be renewed or the lock was taken over.
    #[error("Lock interrupted: {reason}")]
    LockLost { reason: String },

    /// The caller's `AbortSignal` fired while waiting.
    #[error("The operation was aborted")]
    Aborted,

    /// `close()` was called.
    #[error("ResourceLock is closed")]
    Closed,

    /// A connection setting that cannot be honoured.
    #[error("{0}")]
    Configuration(String),

    /// Any other failure reported by the driver or the server.
    #[error("{0}")]
    Mongo(#[from] mongodb::error::Error),
}

impl LockError {
    pub fn type_error(message: impl Into<String>) -> Self {
        LockError::InvalidArgument {
            range: false,
            message: message.into(),
        }
    }

    /// `Was not able to delete <ids>.`, the ids printed as JavaScript's `String()` does.
    pub fn not_deleted(ids: &[ResourceId]) -> Self {
        LockError::NotDeleted {
            ids: ids_to_string(ids),
        }
    }

    pub fn range_error(message: impl Into<String>) -> Self {
        LockError::InvalidArgument {
            range: true,
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

    /// Converts a failed insert into `DuplicateKey` when the server said E11000.
    /// The Rust driver keeps the server's message but not its `keyPattern` and
    /// `keyValue`; both follow from the only unique index on `_locks`, `{ id: 1 }`.
    pub(crate) fn from_insert(error: mongodb::error::Error, key: &LockKey) -> Self {
        if let ErrorKind::Write(WriteFailure::WriteError(w)) = &*error.kind {
            if w.code == DUPLICATE_KEY {
                return LockError::DuplicateKey {
                    message: w.message.clone(),
                    key_pattern: Box::new(doc! { "id": 1 }),
                    key_value: Box::new(doc! { "id": key.to_bson() }),
                };
            }
        }
        LockError::Mongo(error)
    }
}

pub type Result<T, E = LockError> = std::result::Result<T, E>;
