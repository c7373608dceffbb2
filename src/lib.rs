//! The Node.js binding of `mongodb-resource-lock-core`: argument conversion, error
//! mapping and the `ResourceLock` class. No lock logic lives here.

#![deny(clippy::all)]

mod abort_signal;
mod acquire;
mod async_context;
mod callback;
mod close;
mod connection;
mod do_while_locked;
mod error_classes;
mod errors;
mod holder;
mod js_thread;
mod lock;
mod lock_context;
mod lock_handle;
mod node_client;
mod options;
mod promise;
mod resource_ids;
mod resource_lock;
mod retained_value;
mod returned;
mod try_acquire;
mod unlock;
