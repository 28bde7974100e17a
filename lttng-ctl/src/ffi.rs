//! The C side: `dlopen` of liblttng-ctl, the functions used, and the few public structures they
//! take, laid out as LTTng's headers define them (they are part of its stable ABI: fixed sizes
//! with padding, fields at offsets the headers document). Everything here runs on the one
//! thread that owns the library ([`crate::Ctl`]).

use std::ffi::{c_char, c_int, c_void, CStr, CString};

/// `LTTNG_SYMBOL_NAME_LEN`: the size of an event name, NUL included.
pub const SYMBOL_NAME_LEN: usize = 256;
/// `LTTNG_NAME_MAX`: the size of a session name in `struct lttng_session`.
const NAME_MAX: usize = 255;

/// `sizeof(struct lttng_domain)` (x86_64 and every 64-bit Linux ABI; 4-byte aligned).
const DOMAIN_SIZE: usize = 308;
/// `sizeof(struct lttng_event_context)` (8-byte aligned).
const EVENT_CONTEXT_SIZE: usize = 312;
/// `sizeof(struct lttng_session)`: the stride of the array `lttng_list_sessions` returns.
const SESSION_SIZE: usize = 4376;
/// Offsets in `struct lttng_event` (commented in lttng/event.h as part of the ABI).
const EVENT_NAME_OFFSET: usize = 4;
const EVENT_LOGLEVEL_TYPE_OFFSET: usize = 260;
const EVENT_LOGLEVEL_OFFSET: usize = 264;

pub const LTTNG_OK: c_int = 10;
pub const LTTNG_ERR_KERN_EVENT_EXIST: c_int = 35;

/// `enum lttng_domain_type`.
pub const DOMAIN_KERNEL: c_int = 1;
pub const DOMAIN_UST: c_int = 2;
/// `enum lttng_buffer_type`: what `lttng enable-event` uses (per-UID for userspace, global
/// for the kernel).
const BUFFER_PER_UID: c_int = 1;
const BUFFER_GLOBAL: c_int = 2;
/// `enum lttng_event_type`.
pub const EVENT_ALL: c_int = -1;
pub const EVENT_TRACEPOINT: c_int = 0;
pub const EVENT_SYSCALL: c_int = 5;
/// `enum lttng_event_context_type`.
pub const CONTEXT_PROCNAME: c_int = 2;
pub const CONTEXT_VPID: c_int = 5;

type SessionDaemonAlive = unsafe extern "C" fn() -> c_int;
type Strerror = unsafe extern "C" fn(c_int) -> *const c_char;
type CreateSession = unsafe extern "C" fn(*const c_char, *const c_char) -> c_int;
type CreateHandle = unsafe extern "C" fn(*const c_char, *mut c_void) -> *mut c_void;
type DestroyHandle = unsafe extern "C" fn(*mut c_void);
type EventCreate = unsafe extern "C" fn() -> *mut c_void;
type EventDestroy = unsafe extern "C" fn(*mut c_void);
type EnableEvent = unsafe extern "C" fn(
    *mut c_void,
    *mut c_void,
    *const c_char,
    *const c_char,
    c_int,
    *mut *mut c_char,
) -> c_int;
type AddContext =
    unsafe extern "C" fn(*mut c_void, *mut c_void, *const c_char, *const c_char) -> c_int;
type StartTracing = unsafe extern "C" fn(*const c_char) -> c_int;
type StopTracingNoWait = unsafe extern "C" fn(*const c_char) -> c_int;
type DataPending = unsafe extern "C" fn(*const c_char) -> c_int;
type DestroySessionExt = unsafe extern "C" fn(*const c_char, *mut *mut c_void) -> c_int;
type DestructionHandleDestroy = unsafe extern "C" fn(*mut c_void);
type ListSessions = unsafe extern "C" fn(*mut *mut c_void) -> c_int;

/// The loaded library. Not `Send`: it stays on the thread that loaded it, since liblttng-ctl
/// keeps process-wide state without locks.
pub struct Library {
    /// The `dlopen` handle; never closed (the library stays mapped for the process's life:
    /// unloading a library with its own threads and destructors is not safe to do).
    handle: *mut c_void,
    api: Api,
}

struct Api {
    session_daemon_alive: SessionDaemonAlive,
    strerror: Strerror,
    create_session: CreateSession,
    create_handle: CreateHandle,
    destroy_handle: DestroyHandle,
    event_create: EventCreate,
    event_destroy: EventDestroy,
    enable_event: EnableEvent,
    add_context: AddContext,
    start_tracing: StartTracing,
    stop_tracing_no_wait: StopTracingNoWait,
    data_pending: DataPending,
    destroy_session_ext: DestroySessionExt,
    destruction_handle_destroy: DestructionHandleDestroy,
    list_sessions: ListSessions,
}

/// The last `dlerror()` message.
fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl* call on
    // this thread; it is copied at once.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        "unknown dynamic loader error".to_owned()
    } else {
        // SAFETY: non-NULL, NUL-terminated (see above).
        unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Library {
    /// Loads `path` (a file name such as `liblttng-ctl.so.0` is looked up where the dynamic
    /// loader looks) and resolves the functions used.
    pub fn open(path: &str) -> Result<Library, String> {
        let c_path = CString::new(path).map_err(|_| format!("{path:?}: NUL in the path"))?;
        // SAFETY: dlopen takes a NUL-terminated path; loading runs the library's constructors,
        // which is what using it means. RTLD_LOCAL keeps its symbols out of the global scope.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(dl_error());
        }
        macro_rules! resolve {
            ($name:literal, $ty:ty) => {{
                let pointer = symbol(handle, $name)
                    .ok_or_else(|| format!("{path}: no symbol {}: {}", $name, dl_error()))?;
                // SAFETY: the symbol is the function of that name in liblttng-ctl's public API,
                // whose C prototype `$ty` transcribes (lttng/*.h, stable since 2.11).
                unsafe { std::mem::transmute::<*mut c_void, $ty>(pointer) }
            }};
        }
        let api = Api {
            session_daemon_alive: resolve!("lttng_session_daemon_alive", SessionDaemonAlive),
            strerror: resolve!("lttng_strerror", Strerror),
            create_session: resolve!("lttng_create_session", CreateSession),
            create_handle: resolve!("lttng_create_handle", CreateHandle),
            destroy_handle: resolve!("lttng_destroy_handle", DestroyHandle),
            event_create: resolve!("lttng_event_create", EventCreate),
            event_destroy: resolve!("lttng_event_destroy", EventDestroy),
            enable_event: resolve!("lttng_enable_event_with_exclusions", EnableEvent),
            add_context: resolve!("lttng_add_context", AddContext),
            start_tracing: resolve!("lttng_start_tracing", StartTracing),
            stop_tracing_no_wait: resolve!("lttng_stop_tracing_no_wait", StopTracingNoWait),
            data_pending: resolve!("lttng_data_pending", DataPending),
            destroy_session_ext: resolve!("lttng_destroy_session_ext", DestroySessionExt),
            destruction_handle_destroy: resolve!(
                "lttng_destruction_handle_destroy",
                DestructionHandleDestroy
            ),
            list_sessions: resolve!("lttng_list_sessions", ListSessions),
        };
        Ok(Library { handle, api })
    }

    /// Whether the library exports `name`.
    pub fn has(&self, name: &str) -> bool {
        symbol(self.handle, name).is_some()
    }

    /// `lttng_strerror(code)`: the message the `lttng` CLI prints for that error code.
    pub fn strerror(&self, code: c_int) -> String {
        // SAFETY: lttng_strerror returns a pointer to a static NUL-terminated string (or NULL
        // in no version, handled anyway).
        let text = unsafe { (self.api.strerror)(code) };
        if text.is_null() {
            return format!("LTTng error {code}");
        }
        // SAFETY: non-NULL static string.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }

    pub fn session_daemon_alive(&self) -> bool {
        // SAFETY: no arguments; returns 1 when a session daemon answers.
        unsafe { (self.api.session_daemon_alive)() == 1 }
    }

    /// `lttng_create_session(name, url)`: 0 or a negative LTTng error code.
    pub fn create_session(&self, name: &CStr, url: &CStr) -> c_int {
        // SAFETY: two NUL-terminated strings that outlive the call.
        unsafe { (self.api.create_session)(name.as_ptr(), url.as_ptr()) }
    }

    /// Enables `name` (of `event_type`) in `domain` of `session`, in the default channel, as
    /// `lttng enable-event` does; 0 or a negative LTTng error code.
    pub fn enable_event(
        &self,
        session: &CStr,
        domain: c_int,
        event_type: c_int,
        name: &str,
    ) -> c_int {
        let Some(handle) = self.handle_for(session, domain) else {
            return -LTTNG_ERR_NOMEM;
        };
        // SAFETY: lttng_event_create returns a zeroed, heap-allocated `struct lttng_event` of
        // the library's own size, or NULL.
        let event = unsafe { (self.api.event_create)() };
        if event.is_null() {
            handle.close();
            return -LTTNG_ERR_NOMEM;
        }
        let bytes = name.as_bytes();
        let length = bytes.len().min(SYMBOL_NAME_LEN - 1);
        // SAFETY: `event` points to a whole `struct lttng_event` (584 bytes on 64-bit Linux):
        // `type` (int) at offset 0, `name[256]` at 4 (zeroed, so the copy of at most 255 bytes
        // stays NUL-terminated), `loglevel_type` at 260 and `loglevel` at 264, as lttng/event.h
        // documents them.
        unsafe {
            let base = event.cast::<u8>();
            base.cast::<c_int>().write_unaligned(event_type);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(EVENT_NAME_OFFSET), length);
            base.add(EVENT_LOGLEVEL_TYPE_OFFSET)
                .cast::<c_int>()
                .write_unaligned(0); // LTTNG_EVENT_LOGLEVEL_ALL
            base.add(EVENT_LOGLEVEL_OFFSET)
                .cast::<c_int>()
                .write_unaligned(-1);
        }
        // SAFETY: valid handle and event; no channel (the default one, created on first use),
        // no filter, no exclusion: `lttng enable-event` without options.
        let status = unsafe {
            (self.api.enable_event)(
                handle.0,
                event,
                std::ptr::null(),
                std::ptr::null(),
                0,
                std::ptr::null_mut(),
            )
        };
        // SAFETY: the event from lttng_event_create, used no more.
        unsafe { (self.api.event_destroy)(event) };
        handle.close();
        status
    }

    /// Adds the context `context` to every channel of `domain` in `session`
    /// (`lttng add-context -t ...`); 0 or a negative LTTng error code.
    pub fn add_context(&self, session: &CStr, domain: c_int, context: c_int) -> c_int {
        let Some(handle) = self.handle_for(session, domain) else {
            return -LTTNG_ERR_NOMEM;
        };
        // A zeroed `struct lttng_event_context` (8-byte aligned words) with its type first.
        let mut ctx = [0u64; EVENT_CONTEXT_SIZE / 8];
        // SAFETY: the buffer is 312 bytes, the size of the structure, 8-byte aligned; `ctx`
        // (the enum, an int) is its first field.
        unsafe { ctx.as_mut_ptr().cast::<c_int>().write(context) };
        // SAFETY: valid handle, a complete structure the call copies, no event or channel name
        // (all channels of the domain).
        let status = unsafe {
            (self.api.add_context)(
                handle.0,
                ctx.as_mut_ptr().cast(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        handle.close();
        status
    }

    /// `lttng_start_tracing`: 0 or a negative LTTng error code.
    pub fn start(&self, session: &CStr) -> c_int {
        // SAFETY: a NUL-terminated name that outlives the call.
        unsafe { (self.api.start_tracing)(session.as_ptr()) }
    }

    /// Stops `session` without the library's own 200 ms waits, then asks every `step_ms`
    /// whether data is still pending, while `keep_waiting` allows: 0 once the trace is complete
    /// on disk (what `lttng stop` waits for), a negative LTTng error code, or `Err` when
    /// `keep_waiting` gave up. A session already stopped is not an error.
    pub fn stop(
        &self,
        session: &CStr,
        step_ms: u64,
        mut keep_waiting: impl FnMut() -> bool,
    ) -> Result<c_int, ()> {
        // SAFETY: a NUL-terminated name that outlives the call.
        let stopped = unsafe { (self.api.stop_tracing_no_wait)(session.as_ptr()) };
        if stopped < 0 && -stopped != LTTNG_ERR_TRACE_ALREADY_STOPPED {
            return Ok(stopped);
        }
        loop {
            // SAFETY: as above; returns 1 while data is pending, 0 when none, < 0 on error.
            let pending = unsafe { (self.api.data_pending)(session.as_ptr()) };
            match pending {
                0 => return Ok(0),
                p if p < 0 => return Ok(p),
                _ if keep_waiting() => {
                    std::thread::sleep(std::time::Duration::from_millis(step_ms))
                }
                _ => return Err(()),
            }
        }
    }

    /// Asks the session daemon to destroy `session` without waiting for the destruction to
    /// complete (`lttng destroy --no-wait`): the daemon finishes it on its own. 0 or a negative
    /// LTTng error code.
    pub fn destroy_no_wait(&self, session: &CStr) -> c_int {
        let mut handle: *mut c_void = std::ptr::null_mut();
        // SAFETY: a NUL-terminated name and a place for the handle.
        let code = unsafe { (self.api.destroy_session_ext)(session.as_ptr(), &mut handle) };
        if !handle.is_null() {
            // SAFETY: the handle destroy_session_ext returned; dropping it does not cancel the
            // destruction, only our wait for it.
            unsafe { (self.api.destruction_handle_destroy)(handle) };
        }
        if code == LTTNG_OK {
            0
        } else {
            -code
        }
    }

    /// The names of the sessions, or a negative LTTng error code.
    pub fn list_sessions(&self) -> Result<Vec<String>, c_int> {
        let mut sessions: *mut c_void = std::ptr::null_mut();
        // SAFETY: a place for the array pointer; the call mallocs an array of `count`
        // `struct lttng_session` (or leaves it NULL when there is none).
        let count = unsafe { (self.api.list_sessions)(&mut sessions) };
        if count < 0 {
            return Err(count);
        }
        let mut names = Vec::with_capacity(count as usize);
        if !sessions.is_null() {
            for i in 0..count as usize {
                // SAFETY: element i of the array of `count` structures of SESSION_SIZE bytes;
                // `name` is its first field, a NUL-terminated char[255].
                let name = unsafe {
                    let entry = sessions.cast::<u8>().add(i * SESSION_SIZE);
                    let bytes = std::slice::from_raw_parts(entry, NAME_MAX);
                    let end = bytes.iter().position(|b| *b == 0).unwrap_or(NAME_MAX);
                    String::from_utf8_lossy(&bytes[..end]).into_owned()
                };
                names.push(name);
            }
            // SAFETY: the array was malloc'd by the library for the caller to free.
            unsafe { libc::free(sessions) };
        }
        Ok(names)
    }

    fn handle_for(&self, session: &CStr, domain: c_int) -> Option<Handle<'_>> {
        // A zeroed `struct lttng_domain` (4-byte aligned words): type, then buffer type.
        let mut dom = [0u32; DOMAIN_SIZE / 4];
        dom[0] = domain as u32;
        dom[1] = if domain == DOMAIN_KERNEL {
            BUFFER_GLOBAL
        } else {
            BUFFER_PER_UID
        } as u32;
        // SAFETY: a NUL-terminated name and a complete domain structure, both copied by the
        // call into the handle it allocates.
        let handle = unsafe { (self.api.create_handle)(session.as_ptr(), dom.as_mut_ptr().cast()) };
        (!handle.is_null()).then_some(Handle(handle, self))
    }
}

/// `LTTNG_ERR_UNK` and `LTTNG_ERR_NOMEM`.
pub const LTTNG_ERR_UNK: c_int = 11;
pub const LTTNG_ERR_NOMEM: c_int = 26;
/// `LTTNG_ERR_TRACE_ALREADY_STOPPED`.
const LTTNG_ERR_TRACE_ALREADY_STOPPED: c_int = 81;

/// A `struct lttng_handle`, destroyed by [`Handle::close`].
struct Handle<'a>(*mut c_void, &'a Library);

impl Handle<'_> {
    fn close(self) {
        // SAFETY: the handle from lttng_create_handle, used no more.
        unsafe { (self.1.api.destroy_handle)(self.0) };
    }
}

fn symbol(handle: *mut c_void, name: &str) -> Option<*mut c_void> {
    let name = CString::new(name).ok()?;
    // SAFETY: a live dlopen handle and a NUL-terminated symbol name.
    let pointer = unsafe { libc::dlsym(handle, name.as_ptr()) };
    (!pointer.is_null()).then_some(pointer)
}
