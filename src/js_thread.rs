//! The way back from tokio to the JavaScript thread: one threadsafe function per
//! JavaScript thread, shared by every call. A threadsafe function of its own per call
//! (napi-rs's promise bridge) opened and closed a libuv handle and an environment
//! cleanup hook each time, which cost more than the rest of a call that fails at once.
//!
//! It is referenced only while a call is in flight (`busy`/`idle`), so an addon with
//! nothing to do never keeps the process alive, and one with a wait or a hold in
//! progress does, as the original's timers do.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use napi::bindgen_prelude::{JsObjectValue, Object};
use napi::{check_status, sys, Env, JsValue};

type Job = Box<dyn FnOnce(&Env) + Send>;

/// The threadsafe function; `None` once Node has finalized it, which it does when its
/// environment ends (after that it must not be called).
struct Shared(Mutex<Option<Raw>>);

struct Raw(sys::napi_threadsafe_function);

// Calling a threadsafe function from any thread is what it is for; the mutex keeps
// calls from racing its finalization.
unsafe impl Send for Raw {}

/// A handle on the JavaScript thread that created it, usable from any thread.
#[derive(Clone)]
pub struct JsThread(Arc<Shared>);

thread_local! {
    /// Node.js runs one environment per thread (the main one, each worker), so the
    /// thread's own threadsafe function is its environment's.
    static CURRENT: RefCell<Option<JsThread>> = const { RefCell::new(None) };
    /// Calls in flight, counted on the JavaScript thread only.
    static IN_FLIGHT: Cell<usize> = const { Cell::new(0) };
}

impl JsThread {
    /// The calling JavaScript thread's, created on first use. On that thread only.
    pub fn current(env: &Env) -> napi::Result<JsThread> {
        CURRENT.with(|current| {
            let mut current = current.borrow_mut();
            match &*current {
                Some(thread) if thread.raw().is_some() => Ok(thread.clone()),
                _ => {
                    let thread = JsThread::create(env)?;
                    IN_FLIGHT.set(0);
                    *current = Some(thread.clone());
                    Ok(thread)
                }
            }
        })
    }

    fn create(env: &Env) -> napi::Result<JsThread> {
        let shared = Arc::new(Shared(Mutex::new(None)));
        let resource = async_resource(env)?;
        let finalize_data = Weak::into_raw(Arc::downgrade(&shared)) as *mut c_void;
        let mut name = ptr::null_mut();
        let mut raw = ptr::null_mut();
        unsafe {
            check_status!(sys::napi_create_string_utf8(
                env.raw(),
                c"mongodb-resource-lock".as_ptr(),
                c"mongodb-resource-lock".count_bytes() as isize,
                &mut name,
            ))?;
            let created = check_status!(sys::napi_create_threadsafe_function(
                env.raw(),
                ptr::null_mut(),
                resource.raw(),
                name,
                0,
                1,
                finalize_data,
                Some(finalized),
                ptr::null_mut(),
                Some(run_job),
                &mut raw,
            ));
            if let Err(e) = created {
                drop(Weak::from_raw(finalize_data as *const Shared));
                return Err(e);
            }
            check_status!(sys::napi_unref_threadsafe_function(env.raw(), raw))?;
        }
        *shared.lock() = Some(Raw(raw));
        Ok(JsThread(shared))
    }

    fn raw(&self) -> Option<sys::napi_threadsafe_function> {
        self.0.lock().as_ref().map(|raw| raw.0)
    }

    /// A call starts that will `run` a job later: keep the process alive until `idle`.
    /// On the JavaScript thread only.
    pub fn busy(&self, env: &Env) {
        let before = IN_FLIGHT.replace(IN_FLIGHT.get() + 1);
        if let (0, Some(raw)) = (before, self.raw()) {
            unsafe { sys::napi_ref_threadsafe_function(env.raw(), raw) };
        }
    }

    /// A call that was `busy` has ended. On the JavaScript thread only.
    pub fn idle(&self, env: &Env) {
        let after = IN_FLIGHT.get().saturating_sub(1);
        IN_FLIGHT.set(after);
        if let (0, Some(raw)) = (after, self.raw()) {
            unsafe { sys::napi_unref_threadsafe_function(env.raw(), raw) };
        }
    }

    /// Runs `job` on the JavaScript thread, from any thread. When the environment has
    /// ended the job is forgotten: what it holds belongs to that environment and can no
    /// longer be released from here.
    pub fn run(&self, job: impl FnOnce(&Env) + Send + 'static) {
        let job: *mut Job = Box::into_raw(Box::new(Box::new(job)));
        let shared = self.0.lock();
        let queued = shared.as_ref().is_some_and(|raw| {
            let status = unsafe {
                sys::napi_call_threadsafe_function(
                    raw.0,
                    job.cast(),
                    sys::ThreadsafeFunctionCallMode::nonblocking,
                )
            };
            status == sys::Status::napi_ok
        });
        drop(shared);
        if !queued {
            std::mem::forget(unsafe { Box::from_raw(job) });
        }
    }
}

/// A value used on the JavaScript thread only, carried through tokio untouched.
pub struct OnJsThread<T>(T);

// Never touched off the JavaScript thread: moved to tokio and back unread.
unsafe impl<T> Send for OnJsThread<T> {}

impl<T> OnJsThread<T> {
    pub fn new(value: T) -> Self {
        OnJsThread(value)
    }

    /// On the JavaScript thread only.
    pub fn into_inner(self) -> T {
        self.0
    }
}

/// The threadsafe function's async resource, whose `hasRef()` says whether it keeps
/// the process alive, as a libuv handle's does: tools that list what keeps a process
/// alive (jest's `--detectOpenHandles`) take a resource without it as always open.
fn async_resource(env: &Env) -> napi::Result<Object<'_>> {
    let has_ref =
        env.create_function_from_closure::<(), bool, _>("hasRef", |_| Ok(IN_FLIGHT.get() > 0))?;
    let mut resource = Object::new(env)?;
    resource.set_named_property("hasRef", has_ref)?;
    Ok(resource)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Option<Raw>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

unsafe extern "C" fn run_job(
    env: sys::napi_env,
    _function: sys::napi_value,
    _context: *mut c_void,
    data: *mut c_void,
) {
    let job = unsafe { Box::from_raw(data.cast::<Job>()) };
    // A null environment: Node is emptying the queue of an environment that ends.
    if env.is_null() {
        std::mem::forget(job);
        return;
    }
    let env = Env::from_raw(env);
    // Jobs turn their own failures into rejections; this only keeps a panic from
    // unwinding into Node.
    let _ = panic::catch_unwind(AssertUnwindSafe(|| job(&env)));
}

unsafe extern "C" fn finalized(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    let shared = unsafe { Weak::from_raw(data as *const Shared) };
    if let Some(shared) = shared.upgrade() {
        shared.lock().take();
    }
}
