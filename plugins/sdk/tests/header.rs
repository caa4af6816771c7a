//! `contree_plugin.h` must describe exactly the ABI in `src/abi.rs`: the same structs with
//! the same fields in the same order, C types that match the Rust ones, the same offsets
//! and sizes (checked by compiling the header with the system C compiler), the same
//! constants and the same function-pointer signatures.

use contree_plugin::abi;
use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::Path;
use std::process::Command;

#[path = "../../../tests/cli/skip.rs"]
mod skip;

const HEADER: &str = include_str!("../contree_plugin.h");

/// (C struct, field, C type, Rust offset), in declaration order.
fn rust_fields() -> Vec<(&'static str, &'static str, &'static str, usize)> {
    macro_rules! f {
        ($c:literal, $ty:ty, $field:ident, $cty:literal) => {
            ($c, stringify!($field), $cty, offset_of!($ty, $field))
        };
    }
    vec![
        f!("contree_buf", abi::Buf, ptr, "uint8_t *"),
        f!("contree_buf", abi::Buf, len, "size_t"),
        f!("contree_reply", abi::Reply, out, "contree_buf"),
        f!("contree_reply", abi::Reply, err, "contree_buf"),
        f!("contree_reply", abi::Reply, message, "contree_buf"),
        f!("contree_plugin", abi::Descriptor, abi_version, "uint32_t"),
        f!("contree_plugin", abi::Descriptor, struct_size, "uint32_t"),
        f!("contree_plugin", abi::Descriptor, name, "const char *"),
        f!("contree_plugin", abi::Descriptor, version, "const char *"),
        f!("contree_plugin", abi::Descriptor, manifest, "const char *"),
        f!(
            "contree_plugin",
            abi::Descriptor,
            free_buf,
            "contree_free_buf_fn"
        ),
        f!(
            "contree_plugin",
            abi::Descriptor,
            formatter_new,
            "contree_formatter_new_fn"
        ),
        f!(
            "contree_plugin",
            abi::Descriptor,
            formatter_begin,
            "contree_formatter_json_fn"
        ),
        f!(
            "contree_plugin",
            abi::Descriptor,
            formatter_chunk,
            "contree_formatter_chunk_fn"
        ),
        f!(
            "contree_plugin",
            abi::Descriptor,
            formatter_finish,
            "contree_formatter_json_fn"
        ),
        f!(
            "contree_plugin",
            abi::Descriptor,
            formatter_free,
            "contree_formatter_free_fn"
        ),
        f!(
            "contree_plugin",
            abi::Descriptor,
            resolve,
            "contree_resolve_fn"
        ),
    ]
}

fn rust_sizes() -> BTreeMap<&'static str, usize> {
    BTreeMap::from([
        ("contree_buf", size_of::<abi::Buf>()),
        ("contree_reply", size_of::<abi::Reply>()),
        ("contree_plugin", size_of::<abi::Descriptor>()),
    ])
}

/// The function-pointer typedefs as the Rust type aliases in `abi` spell them, in C.
/// A change to either side without the other fails here.
const RUST_FN_TYPES: &[(&str, &str)] = &[
    ("contree_free_buf_fn", "void (uint8_t *ptr, size_t len)"),
    (
        "contree_formatter_new_fn",
        "int32_t (const uint8_t *name, size_t name_len, void **state, contree_reply *reply)",
    ),
    (
        "contree_formatter_json_fn",
        "int32_t (void *state, const uint8_t *json, size_t json_len, contree_reply *reply)",
    ),
    (
        "contree_formatter_chunk_fn",
        "int32_t (void *state, uint32_t stream, const uint8_t *bytes, size_t len, contree_reply *reply)",
    ),
    ("contree_formatter_free_fn", "void (void *state)"),
    (
        "contree_resolve_fn",
        "int32_t (const uint8_t *request, size_t request_len, contree_reply *reply)",
    ),
    ("contree_plugin_entry_fn", "const contree_plugin * (void)"),
];

/// Checks that each alias above really has that shape in Rust (compile-time).
#[allow(dead_code)]
fn rust_aliases_have_these_shapes() {
    use std::ffi::c_void;
    let _: abi::FreeBufFn = {
        unsafe extern "C" fn f(_ptr: *mut u8, _len: usize) {}
        f
    };
    let _: abi::FormatterNewFn = {
        unsafe extern "C" fn f(
            _: *const u8,
            _: usize,
            _: *mut *mut c_void,
            _: *mut abi::Reply,
        ) -> i32 {
            0
        }
        f
    };
    let _: abi::FormatterJsonFn = {
        unsafe extern "C" fn f(_: *mut c_void, _: *const u8, _: usize, _: *mut abi::Reply) -> i32 {
            0
        }
        f
    };
    let _: abi::FormatterChunkFn = {
        unsafe extern "C" fn f(
            _: *mut c_void,
            _: u32,
            _: *const u8,
            _: usize,
            _: *mut abi::Reply,
        ) -> i32 {
            0
        }
        f
    };
    let _: abi::FormatterFreeFn = {
        unsafe extern "C" fn f(_: *mut c_void) {}
        f
    };
    let _: abi::ResolveFn = {
        unsafe extern "C" fn f(_: *const u8, _: usize, _: *mut abi::Reply) -> i32 {
            0
        }
        f
    };
    let _: abi::EntryFn = {
        unsafe extern "C" fn f() -> *const abi::Descriptor {
            std::ptr::null()
        }
        f
    };
}

fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        rest = rest[start..]
            .find("*/")
            .map_or("", |end| &rest[start + end + 2..]);
    }
    out.push_str(rest);
    out
}

fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// (struct, field, C type) from every `typedef struct NAME { ... } NAME;` in the header.
fn header_fields() -> Vec<(String, String, String)> {
    let text = strip_comments(HEADER);
    let mut fields = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("typedef struct ") {
        let body_start = rest[start..].find('{').expect("struct body") + start;
        let body_end = rest[body_start..].find('}').expect("struct end") + body_start;
        let name = rest[start + "typedef struct ".len()..body_start]
            .trim()
            .to_string();
        for decl in rest[body_start + 1..body_end].split(';') {
            let decl = squash(decl);
            if decl.is_empty() {
                continue;
            }
            let split = decl
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .expect("a type before the field name");
            let (ty, field) = decl.split_at(split + 1);
            let mut ty = ty.trim().to_string();
            if let Some(base) = ty.strip_suffix('*') {
                ty = format!("{} *", base.trim_end());
            }
            fields.push((name.clone(), field.to_string(), ty));
        }
        rest = &rest[body_end..];
    }
    fields
}

/// `NAME -> "RET (PARAMS)"` for every `typedef RET (*NAME)(PARAMS);`.
fn header_fn_types() -> BTreeMap<String, String> {
    let text = strip_comments(HEADER);
    let mut out = BTreeMap::new();
    for stmt in text.split(';') {
        let stmt = squash(stmt);
        let Some(decl) = stmt.strip_prefix("typedef ") else {
            continue;
        };
        let Some(open) = decl.find("(*") else {
            continue;
        };
        let close = decl[open..].find(')').unwrap() + open;
        let ret = decl[..open].trim();
        let name = &decl[open + 2..close];
        let params = decl[close + 1..].trim();
        out.insert(name.to_string(), format!("{ret} {params}"));
    }
    out
}

fn header_define(name: &str) -> String {
    let prefix = format!("#define {name} ");
    let line = HEADER
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{name} is not defined in the header"));
    strip_comments(&line[prefix.len()..]).trim().to_string()
}

#[test]
fn header_structs_match_the_rust_abi_field_by_field() {
    let header: Vec<(String, String, String)> = header_fields();
    let rust: Vec<(String, String, String)> = rust_fields()
        .into_iter()
        .map(|(s, f, t, _)| (s.to_string(), f.to_string(), t.to_string()))
        .collect();
    assert_eq!(header, rust, "contree_plugin.h and src/abi.rs disagree");
}

#[test]
fn header_function_types_match_the_rust_aliases() {
    let expected: BTreeMap<String, String> = RUST_FN_TYPES
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    assert_eq!(header_fn_types(), expected);
}

#[test]
fn header_constants_match() {
    assert_eq!(
        header_define("CONTREE_PLUGIN_ABI_VERSION"),
        abi::ABI_VERSION.to_string()
    );
    assert_eq!(
        header_define("CONTREE_PLUGIN_ENTRY_SYMBOL"),
        format!("\"{}\"", abi::ENTRY_SYMBOL)
    );
    assert_eq!(
        abi::ENTRY_SYMBOL,
        format!("contree_plugin_v{}", abi::ABI_VERSION)
    );
    assert_eq!(
        header_define("CONTREE_STATUS_OK"),
        abi::STATUS_OK.to_string()
    );
    assert_eq!(
        header_define("CONTREE_STATUS_ERROR"),
        abi::STATUS_ERROR.to_string()
    );
    assert_eq!(
        header_define("CONTREE_STATUS_PANIC"),
        abi::STATUS_PANIC.to_string()
    );
    assert_eq!(
        header_define("CONTREE_STREAM_STDOUT"),
        abi::STREAM_STDOUT.to_string()
    );
    assert_eq!(
        header_define("CONTREE_STREAM_STDERR"),
        abi::STREAM_STDERR.to_string()
    );
}

#[test]
fn the_c_compiler_lays_the_header_out_like_rust() {
    let tmp = std::env::temp_dir().join(format!("contree-header-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut program = String::from("#include <stdio.h>\n#include <stddef.h>\n#include \"contree_plugin.h\"\nint main(void) {\n");
    for (s, f, _, _) in rust_fields() {
        program.push_str(&format!(
            "    printf(\"{s} {f} %zu\\n\", offsetof({s}, {f}));\n"
        ));
    }
    for s in rust_sizes().keys() {
        program.push_str(&format!(
            "    printf(\"{s} sizeof %zu\\n\", sizeof({s}));\n"
        ));
    }
    program.push_str("    return 0;\n}\n");
    let source = tmp.join("layout.c");
    let exe = tmp.join("layout");
    std::fs::write(&source, program).unwrap();
    let include = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(include)
        .arg(&source)
        .arg("-o")
        .arg(&exe)
        .output();
    let built = match built {
        Ok(b) => b,
        Err(e) => {
            skip::skip(&format!("no C compiler ({cc}: {e})"));
            return;
        }
    };
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    let c_layout = String::from_utf8(run.stdout).unwrap();
    let mut rust_layout = String::new();
    for (s, f, _, off) in rust_fields() {
        rust_layout.push_str(&format!("{s} {f} {off}\n"));
    }
    for (s, size) in rust_sizes() {
        rust_layout.push_str(&format!("{s} sizeof {size}\n"));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert_eq!(c_layout, rust_layout);
}
