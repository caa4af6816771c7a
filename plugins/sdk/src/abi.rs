//! The C ABI between `contree` and a plugin, version 1. Mirrored by `contree_plugin.h`
//! (a test keeps the two in sync); `docs/plugins.md` is the prose version.
//!
//! Rules: only these `#[repr(C)]` types, integers, byte buffers and NUL-terminated UTF-8
//! strings cross the boundary. Every buffer a plugin hands back was allocated by the plugin
//! and is released by the host through the descriptor's `free_buf`, exactly once. Input
//! buffers belong to the host and are only valid during the call. No call may unwind: the
//! SDK catches panics and reports them with [`STATUS_PANIC`].

use std::ffi::{c_char, c_void};

/// The ABI version this crate describes; also the suffix of [`ENTRY_SYMBOL`].
pub const ABI_VERSION: u32 = 1;

/// The one symbol the host looks up: `const Descriptor *contree_plugin_v1(void)`.
pub const ENTRY_SYMBOL: &str = "contree_plugin_v1";

/// A call did what was asked; the reply's `out`/`err` hold its bytes.
pub const STATUS_OK: i32 = 0;
/// A call failed; the reply's `message` says why (UTF-8).
pub const STATUS_ERROR: i32 = 1;
/// The plugin panicked (or the C equivalent); the reply's `message` says where.
pub const STATUS_PANIC: i32 = 2;

/// `stream` argument of `formatter_chunk`.
pub const STREAM_STDOUT: u32 = 1;
pub const STREAM_STDERR: u32 = 2;

/// A buffer allocated by the plugin: `len` bytes at `ptr` (NULL when empty). The host
/// copies it and then calls `free_buf(ptr, len)`.
#[repr(C)]
#[derive(Debug)]
pub struct Buf {
    pub ptr: *mut u8,
    pub len: usize,
}

impl Buf {
    pub const EMPTY: Buf = Buf {
        ptr: std::ptr::null_mut(),
        len: 0,
    };
}

/// What a call hands back. The host zeroes it before every call.
///
/// For formatter calls `out` and `err` are bytes for contree's stdout and stderr; for
/// `resolve`, `out` is the JSON answer. With a non-zero status only `message` is read
/// (the host still frees all three).
#[repr(C)]
#[derive(Debug)]
pub struct Reply {
    pub out: Buf,
    pub err: Buf,
    pub message: Buf,
}

impl Reply {
    pub const EMPTY: Reply = Reply {
        out: Buf::EMPTY,
        err: Buf::EMPTY,
        message: Buf::EMPTY,
    };
}

/// Releases a buffer the plugin returned in a [`Reply`].
pub type FreeBufFn = unsafe extern "C" fn(ptr: *mut u8, len: usize);
/// Creates formatter NAME (bytes, not NUL-terminated); stores its state in `*state`.
pub type FormatterNewFn = unsafe extern "C" fn(
    name: *const u8,
    name_len: usize,
    state: *mut *mut c_void,
    reply: *mut Reply,
) -> i32;
/// `begin` (the run info as JSON) and `finish` (the result record as JSON).
pub type FormatterJsonFn = unsafe extern "C" fn(
    state: *mut c_void,
    json: *const u8,
    json_len: usize,
    reply: *mut Reply,
) -> i32;
/// One piece of output of the run, in order, on [`STREAM_STDOUT`] or [`STREAM_STDERR`].
pub type FormatterChunkFn = unsafe extern "C" fn(
    state: *mut c_void,
    stream: u32,
    bytes: *const u8,
    len: usize,
    reply: *mut Reply,
) -> i32;
/// Releases a formatter's state; called once, after `finish` or instead of it.
pub type FormatterFreeFn = unsafe extern "C" fn(state: *mut c_void);
/// Resolves one `--file SCHEME:REST` (the request as JSON); the answer goes to `reply.out`.
pub type ResolveFn =
    unsafe extern "C" fn(request: *const u8, request_len: usize, reply: *mut Reply) -> i32;

/// What `contree_plugin_v1` returns: static data that lives as long as the library.
///
/// `abi_version` and `struct_size` come first and never move. The struct may only grow
/// at the end: the host accepts any `struct_size` at least as large as the one it knows
/// and reads no further. Function pointers may be NULL when the manifest provides nothing
/// that needs them.
#[repr(C)]
#[derive(Debug)]
pub struct Descriptor {
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// `sizeof(Descriptor)` as the plugin was built.
    pub struct_size: u32,
    /// The plugin's name, NUL-terminated UTF-8.
    pub name: *const c_char,
    /// The plugin's version, NUL-terminated UTF-8.
    pub version: *const c_char,
    /// What it provides, NUL-terminated JSON:
    /// `{"formatters":[{"name":"junit","live":false}],"resolvers":[{"scheme":"git","parts":2,"usage":"git:REV:PATH"}]}`.
    pub manifest: *const c_char,
    pub free_buf: Option<FreeBufFn>,
    pub formatter_new: Option<FormatterNewFn>,
    pub formatter_begin: Option<FormatterJsonFn>,
    pub formatter_chunk: Option<FormatterChunkFn>,
    pub formatter_finish: Option<FormatterJsonFn>,
    pub formatter_free: Option<FormatterFreeFn>,
    pub resolve: Option<ResolveFn>,
}

/// The entry point's type.
pub type EntryFn = unsafe extern "C" fn() -> *const Descriptor;
