//! The tokio runtime the addon's work runs on: one worker thread, unless the
//! application sets `TOKIO_WORKER_THREADS` (napi-rs would start one per core, and does
//! when it starts its runtime again: after every thread that loaded the addon ended,
//! for the next one that loads it).
//!
//! A lock's work on tokio is short: encode a command, wait for the server, wake a
//! waiter, settle a promise. A second worker buys no parallelism worth having there,
//! and its wake-ups from one thread to the other cost CPU and time on every
//! hand-over. On a 2-core machine (`secantusd-rs`, everything on the same cores,
//! alternating builds, a fresh server per round), 4 processes on one key: 0.89-1.28
//! against 1.14-1.43 ms of CPU per hand-over in the processes, and 391 against 366
//! hand-overs/s (medians of eight rounds; in another sitting, ahead in six rounds of
//! six). The benchmark's scaling curve, 64 parallel callers and one process of 16
//! callers were no slower with one worker.

use napi::bindgen_prelude::create_custom_tokio_runtime;

/// Runs when the addon loads; napi-rs takes the runtime at its first use.
#[napi_derive::module_init]
fn init() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads())
        .enable_all()
        .build();
    // Without a runtime of its own, napi-rs builds its default one at first use.
    if let Ok(runtime) = runtime {
        create_custom_tokio_runtime(runtime);
    }
}

/// `TOKIO_WORKER_THREADS` if it is a positive count, else 1. tokio would panic on
/// any other value, and a panic here aborts the process as it loads the addon.
fn worker_threads() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|value| value.trim().parse().ok())
        .filter(|&count| count > 0)
        .unwrap_or(1)
}
