//! The glue `export_plugin!` generates, called the way the host calls it: through the
//! descriptor's C function pointers, with the host owning the replies and freeing every
//! buffer through `free_buf`.

use contree_plugin::abi::*;
use contree_plugin::msg::Manifest;
use contree_plugin::{
    export_plugin, Emit, Formatter, FormatterDef, Plugin, ResolveRequest, Resolved, ResolvedFile,
    Resolver, ResolverDef, RunInfo, RunResult, Stream,
};
use std::ffi::{c_void, CStr};

#[derive(Default)]
struct Upper {
    seen: usize,
}

impl Formatter for Upper {
    fn begin(&mut self, info: &RunInfo) -> Result<Emit, String> {
        Ok(Emit::stderr(format!("begin {}\n", info.op)))
    }
    fn chunk(&mut self, stream: Stream, bytes: &[u8]) -> Result<Emit, String> {
        if bytes == b"panic" {
            panic!("asked to panic");
        }
        self.seen += bytes.len();
        Ok(match stream {
            Stream::Stdout => Emit::stdout(bytes.to_ascii_uppercase()),
            Stream::Stderr => Emit::stderr(bytes),
        })
    }
    fn finish(&mut self, result: &RunResult) -> Result<Emit, String> {
        match result.exit_code() {
            Some(0) => Ok(Emit::stdout(format!("{} bytes\n", self.seen))),
            _ => Err("only exit 0 is formatted".into()),
        }
    }
}

struct Echo;

impl Resolver for Echo {
    fn resolve(&self, request: &ResolveRequest) -> Result<Resolved, String> {
        Ok(Resolved {
            name: request.rest.clone(),
            files: vec![ResolvedFile::content("", request.rest.as_bytes()).mode(0o600)],
        })
    }
}

export_plugin!(Plugin {
    name: "glue-test",
    version: "9.9",
    formatters: &[FormatterDef {
        name: "upper",
        live: true,
        new: || Box::new(Upper::default()),
    }],
    resolvers: &[ResolverDef {
        scheme: "echo",
        parts: 1,
        usage: "echo:TEXT",
        resolver: &Echo,
    }],
});

fn desc() -> &'static Descriptor {
    unsafe { &*contree_plugin_v1() }
}

/// Takes the reply's buffers the way the host does: copy, then free through the plugin.
fn take(reply: &mut Reply) -> (Vec<u8>, Vec<u8>, String) {
    let free = desc().free_buf.unwrap();
    let grab = |b: &mut Buf| {
        let v = if b.ptr.is_null() {
            Vec::new()
        } else {
            unsafe { std::slice::from_raw_parts(b.ptr, b.len) }.to_vec()
        };
        unsafe { free(b.ptr, b.len) };
        *b = Buf::EMPTY;
        v
    };
    let out = grab(&mut reply.out);
    let err = grab(&mut reply.err);
    let msg = String::from_utf8(grab(&mut reply.message)).unwrap();
    (out, err, msg)
}

fn new_formatter(name: &str) -> (i32, *mut c_void, String) {
    let mut state = std::ptr::null_mut();
    let mut reply = Reply::EMPTY;
    let status =
        unsafe { desc().formatter_new.unwrap()(name.as_ptr(), name.len(), &mut state, &mut reply) };
    (status, state, take(&mut reply).2)
}

#[test]
fn the_descriptor_names_the_plugin_and_its_manifest() {
    let d = desc();
    assert_eq!(d.abi_version, ABI_VERSION);
    assert_eq!(d.struct_size as usize, std::mem::size_of::<Descriptor>());
    let text = |p| unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string();
    assert_eq!(text(d.name), "glue-test");
    assert_eq!(text(d.version), "9.9");
    let m: Manifest = serde_json::from_str(&text(d.manifest)).unwrap();
    assert_eq!(m.formatters[0].name, "upper");
    assert!(m.formatters[0].live);
    assert_eq!(
        (m.resolvers[0].scheme.as_str(), m.resolvers[0].parts),
        ("echo", 1)
    );
    assert_eq!(m.resolvers[0].usage.as_deref(), Some("echo:TEXT"));
    // The same descriptor every time.
    assert!(std::ptr::eq(d, desc()));
}

#[test]
fn a_formatter_streams_through_the_c_calls() {
    let d = desc();
    let (status, state, msg) = new_formatter("upper");
    assert_eq!((status, msg.as_str()), (STATUS_OK, ""));
    let mut reply = Reply::EMPTY;
    let info = br#"{"op":"op-1","request":{},"backend":"local"}"#;
    assert_eq!(
        unsafe { d.formatter_begin.unwrap()(state, info.as_ptr(), info.len(), &mut reply) },
        STATUS_OK
    );
    assert_eq!(
        take(&mut reply),
        (vec![], b"begin op-1\n".to_vec(), String::new())
    );
    let bytes = b"hello";
    let status = unsafe {
        d.formatter_chunk.unwrap()(
            state,
            STREAM_STDOUT,
            bytes.as_ptr(),
            bytes.len(),
            &mut reply,
        )
    };
    assert_eq!(status, STATUS_OK);
    assert_eq!(take(&mut reply).0, b"HELLO");
    let result = br#"{"exit_code":0}"#;
    assert_eq!(
        unsafe { d.formatter_finish.unwrap()(state, result.as_ptr(), result.len(), &mut reply) },
        STATUS_OK
    );
    assert_eq!(take(&mut reply).0, b"5 bytes\n");
    unsafe { d.formatter_free.unwrap()(state) };
}

#[test]
fn errors_and_panics_come_back_as_statuses_with_a_message() {
    let d = desc();
    let (status, state, msg) = new_formatter("nope");
    assert_eq!((status, state.is_null()), (STATUS_ERROR, true));
    assert_eq!(msg, "this plugin has no formatter 'nope'");

    let (_, state, _) = new_formatter("upper");
    let mut reply = Reply::EMPTY;
    let bytes = b"panic";
    let status = unsafe {
        d.formatter_chunk.unwrap()(
            state,
            STREAM_STDOUT,
            bytes.as_ptr(),
            bytes.len(),
            &mut reply,
        )
    };
    assert_eq!(status, STATUS_PANIC);
    let (out, _, msg) = take(&mut reply);
    assert!(out.is_empty());
    assert!(msg.starts_with("asked to panic (at "), "{msg}");
    assert!(msg.contains("glue.rs:"), "{msg}");

    let status = unsafe { d.formatter_chunk.unwrap()(state, 7, bytes.as_ptr(), 1, &mut reply) };
    assert_eq!(
        (status, take(&mut reply).2.as_str()),
        (STATUS_ERROR, "unknown stream 7")
    );

    let result = br#"{"exit_code":1}"#;
    let status =
        unsafe { d.formatter_finish.unwrap()(state, result.as_ptr(), result.len(), &mut reply) };
    assert_eq!(
        (status, take(&mut reply).2.as_str()),
        (STATUS_ERROR, "only exit 0 is formatted")
    );
    let status = unsafe { d.formatter_finish.unwrap()(state, b"{".as_ptr(), 1, &mut reply) };
    assert_eq!(status, STATUS_ERROR);
    assert!(take(&mut reply)
        .2
        .starts_with("contree sent invalid run result JSON"));
    unsafe { d.formatter_free.unwrap()(state) };
    // NULL state is an error, not a crash.
    let status = unsafe {
        d.formatter_chunk.unwrap()(std::ptr::null_mut(), 1, bytes.as_ptr(), 1, &mut reply)
    };
    assert_eq!(
        (status, take(&mut reply).2.as_str()),
        (STATUS_ERROR, "formatter state is NULL")
    );
}

#[test]
fn a_resolver_answers_json() {
    let d = desc();
    let mut reply = Reply::EMPTY;
    let req = br#"{"scheme":"echo","rest":"hi","cwd":"/"}"#;
    assert_eq!(
        unsafe { d.resolve.unwrap()(req.as_ptr(), req.len(), &mut reply) },
        STATUS_OK
    );
    let answer: Resolved = serde_json::from_slice(&take(&mut reply).0).unwrap();
    assert_eq!(answer.name, "hi");
    assert_eq!(answer.files[0].content.as_deref(), Some(&b"hi"[..]));
    let req = br#"{"scheme":"other","rest":"","cwd":"/"}"#;
    assert_eq!(
        unsafe { d.resolve.unwrap()(req.as_ptr(), req.len(), &mut reply) },
        STATUS_ERROR
    );
    assert_eq!(
        take(&mut reply).2,
        "this plugin has no resolver for 'other:'"
    );
}
