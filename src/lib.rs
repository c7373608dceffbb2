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
mod runtime;
mod try_acquire;
mod unlock;

/// On Linux with glibc the addon's Rust allocations go to mimalloc, which hands memory
/// freed after a burst back to the system; glibc's malloc kept it (`npm run bench`,
/// memory: after 10 000 locks held at once were released, 408 MB of RSS against 225).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
