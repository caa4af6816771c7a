//! The glue behind [`export_plugin!`](crate::export_plugin): the descriptor and the
//! `extern "C"` functions in it, turning the safe traits into the C ABI.
//!
//! Every function here catches panics and turns them into [`STATUS_PANIC`]; nothing may
//! unwind into the host. Each plugin library links its own copy of this module (and of
//! std), so the statics below belong to one plugin.

use crate::abi::*;
use crate::msg::{FormatterDecl, Manifest, ResolverDecl};
use crate::{Emit, Formatter, Plugin, Stream};
use std::cell::RefCell;
use std::ffi::{c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

struct Exported {
    plugin: &'static Plugin,
    // Owned here so the descriptor's pointers stay valid for the library's lifetime.
    _strings: [CString; 3],
    descriptor: Descriptor,
}

// The descriptor holds raw pointers to the strings above and to functions; none of it
// is ever mutated after construction.
unsafe impl Sync for Exported {}
unsafe impl Send for Exported {}

static EXPORTED: OnceLock<Exported> = OnceLock::new();

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Builds (once) and returns the descriptor for `plugin`. Never unwinds: on a panic the
/// host gets NULL, which it reports as a broken plugin.
pub fn descriptor(plugin: &'static Plugin) -> *const Descriptor {
    catch_unwind(AssertUnwindSafe(|| {
        let exported = EXPORTED.get_or_init(|| {
            // This std is the plugin's own copy: the hook only sees the plugin's panics,
            // and keeps them off contree's stderr; the host prints the message instead.
            std::panic::set_hook(Box::new(|info| {
                let message = payload_text(info.payload());
                let text = match info.location() {
                    Some(at) => format!("{message} (at {}:{})", at.file(), at.line()),
                    None => message,
                };
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
            }));
            build(plugin)
        });
        &exported.descriptor as *const Descriptor
    }))
    .unwrap_or(std::ptr::null())
}

fn cstring(text: &str) -> CString {
    CString::new(text.replace('\0', "")).unwrap_or_default()
}

fn build(plugin: &'static Plugin) -> Exported {
    let manifest = Manifest {
        formatters: plugin
            .formatters
            .iter()
            .map(|f| FormatterDecl {
                name: f.name.to_string(),
                live: f.live,
            })
            .collect(),
        resolvers: plugin
            .resolvers
            .iter()
            .map(|r| ResolverDecl {
                scheme: r.scheme.to_string(),
                parts: r.parts,
                usage: Some(r.usage.to_string()).filter(|u| !u.is_empty()),
            })
            .collect(),
    };
    let strings = [
        cstring(plugin.name),
        cstring(plugin.version),
        cstring(&serde_json::to_string(&manifest).unwrap_or_default()),
    ];
    let has_formatters = !plugin.formatters.is_empty();
    let descriptor = Descriptor {
        abi_version: ABI_VERSION,
        struct_size: std::mem::size_of::<Descriptor>() as u32,
        name: strings[0].as_ptr(),
        version: strings[1].as_ptr(),
        manifest: strings[2].as_ptr(),
        free_buf: Some(free_buf),
        formatter_new: has_formatters.then_some(formatter_new as FormatterNewFn),
        formatter_begin: has_formatters.then_some(formatter_begin as FormatterJsonFn),
        formatter_chunk: has_formatters.then_some(formatter_chunk as FormatterChunkFn),
        formatter_finish: has_formatters.then_some(formatter_finish as FormatterJsonFn),
        formatter_free: has_formatters.then_some(formatter_free as FormatterFreeFn),
        resolve: (!plugin.resolvers.is_empty()).then_some(resolve as ResolveFn),
    };
    Exported {
        plugin,
        _strings: strings,
        descriptor,
    }
}

fn plugin() -> Result<&'static Plugin, String> {
    EXPORTED
        .get()
        .map(|e| e.plugin)
        .ok_or_else(|| "called before contree_plugin_v1".to_string())
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Hands `bytes` to the host; it comes back through [`free_buf`].
fn give(bytes: Vec<u8>) -> Buf {
    if bytes.is_empty() {
        return Buf::EMPTY;
    }
    let boxed: Box<[u8]> = bytes.into_boxed_slice();
    let len = boxed.len();
    Buf {
        ptr: Box::into_raw(boxed) as *mut u8,
        len,
    }
}

unsafe extern "C" fn free_buf(ptr: *mut u8, len: usize) {
    if ptr.is_null() {
        return;
    }
    // Dropping cannot panic for a boxed byte slice, but nothing may unwind from here.
    let _ = catch_unwind(|| {
        // SAFETY: `ptr`/`len` came from `give`, which leaked exactly this boxed slice, and
        // the host frees each buffer once.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) });
    });
}

/// Runs `f`, catching panics, and writes its outcome into `reply`.
fn guard(reply: *mut Reply, f: impl FnOnce() -> Result<Emit, String>) -> i32 {
    LAST_PANIC.with(|p| p.borrow_mut().take());
    let (status, emit, message) = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(emit)) => (STATUS_OK, emit, String::new()),
        Ok(Err(message)) => (STATUS_ERROR, Emit::none(), message),
        Err(payload) => {
            let message = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| payload_text(&*payload));
            (STATUS_PANIC, Emit::none(), message)
        }
    };
    if reply.is_null() {
        return STATUS_ERROR;
    }
    // SAFETY: the host passes a valid, zeroed Reply it owns for the duration of the call.
    unsafe {
        (*reply).out = give(emit.stdout);
        (*reply).err = give(emit.stderr);
        (*reply).message = give(message.into_bytes());
    }
    status
}

/// The host's input bytes; empty for a NULL pointer.
unsafe fn input<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: the host guarantees `len` readable bytes at `ptr` during the call.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

fn json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("contree sent invalid {what} JSON: {e}"))
}

type State = Box<dyn Formatter>;

/// The formatter behind a state pointer.
unsafe fn state<'a>(ptr: *mut c_void) -> Result<&'a mut State, String> {
    if ptr.is_null() {
        return Err("formatter state is NULL".into());
    }
    // SAFETY: non-null state pointers are the `Box<State>` leaked by `formatter_new` and
    // not yet freed; the host calls one formatter from one thread at a time.
    Ok(unsafe { &mut *(ptr as *mut State) })
}

unsafe extern "C" fn formatter_new(
    name: *const u8,
    name_len: usize,
    out: *mut *mut c_void,
    reply: *mut Reply,
) -> i32 {
    // SAFETY: per the ABI, `name` holds `name_len` bytes during the call.
    let name = unsafe { input(name, name_len) };
    guard(reply, || {
        let name = std::str::from_utf8(name).map_err(|_| "formatter name is not UTF-8")?;
        let def = plugin()?
            .formatters
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| format!("this plugin has no formatter '{name}'"))?;
        if out.is_null() {
            return Err("state out-pointer is NULL".into());
        }
        let state: Box<State> = Box::new((def.new)());
        // SAFETY: `out` is a valid pointer the host owns for the call.
        unsafe { *out = Box::into_raw(state) as *mut c_void };
        Ok(Emit::none())
    })
}

unsafe extern "C" fn formatter_begin(
    st: *mut c_void,
    data: *const u8,
    len: usize,
    reply: *mut Reply,
) -> i32 {
    // SAFETY: per the ABI, see `input`.
    let data = unsafe { input(data, len) };
    guard(reply, || {
        // SAFETY: see `state`.
        let f = unsafe { state(st) }?;
        f.begin(&json(data, "run info")?)
    })
}

unsafe extern "C" fn formatter_chunk(
    st: *mut c_void,
    stream: u32,
    data: *const u8,
    len: usize,
    reply: *mut Reply,
) -> i32 {
    // SAFETY: per the ABI, see `input`.
    let data = unsafe { input(data, len) };
    guard(reply, || {
        // SAFETY: see `state`.
        let f = unsafe { state(st) }?;
        let stream = match stream {
            STREAM_STDOUT => Stream::Stdout,
            STREAM_STDERR => Stream::Stderr,
            other => return Err(format!("unknown stream {other}")),
        };
        f.chunk(stream, data)
    })
}

unsafe extern "C" fn formatter_finish(
    st: *mut c_void,
    data: *const u8,
    len: usize,
    reply: *mut Reply,
) -> i32 {
    // SAFETY: per the ABI, see `input`.
    let data = unsafe { input(data, len) };
    guard(reply, || {
        // SAFETY: see `state`.
        let f = unsafe { state(st) }?;
        f.finish(&json(data, "run result")?)
    })
}

unsafe extern "C" fn formatter_free(st: *mut c_void) {
    if st.is_null() {
        return;
    }
    // A formatter's Drop may panic; it must not unwind into the host.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `st` is the Box leaked by `formatter_new`; the host frees it once.
        drop(unsafe { Box::from_raw(st as *mut State) });
    }));
}

unsafe extern "C" fn resolve(data: *const u8, len: usize, reply: *mut Reply) -> i32 {
    // SAFETY: per the ABI, see `input`.
    let data = unsafe { input(data, len) };
    guard(reply, || {
        let request: crate::ResolveRequest = json(data, "resolve request")?;
        let def = plugin()?
            .resolvers
            .iter()
            .find(|r| r.scheme == request.scheme)
            .ok_or_else(|| format!("this plugin has no resolver for '{}:'", request.scheme))?;
        let answer = def.resolver.resolve(&request)?;
        let bytes =
            serde_json::to_vec(&answer).map_err(|e| format!("cannot encode answer: {e}"))?;
        Ok(Emit::stdout(bytes))
    })
}
