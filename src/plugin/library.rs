//! One plugin file: open it, find the entry symbol, check the descriptor (ABI version and
//! struct size before anything else), read its name, version and manifest, and make calls
//! through it with the reply buffers freed by the plugin's own `free_buf`.
//!
//! Must never: call a function pointer before the checks passed, unload a library, or let
//! a plugin's buffer outlive the call that returned it.

use super::PluginError;
use contree_plugin::abi::{self, Buf, Descriptor, EntryFn, FreeBufFn, Reply};
use contree_plugin::msg::Manifest;
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use std::ffi::{c_char, CStr};
use std::path::{Path, PathBuf};

/// Output formats of the binary itself: a plugin may not take these names.
pub const RESERVED_FORMATTERS: &[&str] = &["default", "table", "json", "json-pretty", "csv", "tsv"];

/// What is wrong with a plugin's descriptor or manifest.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DescriptorError {
    #[error("{}() returned NULL", abi::ENTRY_SYMBOL)]
    NullEntry,
    #[error("the descriptor is misaligned")]
    Misaligned,
    #[error("struct_size is {size} bytes; ABI v{version} needs at least {known}")]
    TooSmall {
        size: u32,
        version: u32,
        known: usize,
    },
    #[error("{0} is NULL")]
    Null(&'static str),
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("manifest is not valid: {0}")]
    Manifest(std::sync::Arc<serde_json::Error>),
    #[error("name is empty")]
    EmptyName,
    #[error("formatter name '{0}' is not lowercase letters, digits, '-', '_' and '.'")]
    FormatterName(String),
    #[error("formatter '{0}' is a built-in format")]
    BuiltinFormatter(String),
    #[error("formatter '{0}' is listed twice")]
    FormatterTwice(String),
    #[error("scheme '{0}' is not two or more of a-z, 0-9, '+', '-', '.' starting with a letter")]
    SchemeName(String),
    #[error("scheme '{scheme}' takes {parts} parts (1 to 16)")]
    SchemeParts { scheme: String, parts: u32 },
    #[error("scheme '{0}' is listed twice")]
    SchemeTwice(String),
    #[error("it provides formatters but {0} is NULL")]
    NoFormatterCall(&'static str),
    #[error("it provides resolvers but resolve is NULL")]
    NoResolve,
}

/// A loaded, checked plugin. Leaked on load: it lives (and its library stays mapped) until
/// the process exits.
pub struct LoadedPlugin {
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    pub abi: u32,
    pub manifest: Manifest,
    desc: Descriptor,
    free_buf: FreeBufFn,
    _lib: Library,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("path", &self.path)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("manifest", &self.manifest)
            .finish()
    }
}

/// The `dlerror` text behind a libloading error (its Display says only "dlopen failed").
fn dl_text(e: &libloading::Error) -> String {
    std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string())
}

/// Loads and checks `path`. Running the library's initialisers is the one thing that
/// happens before any check: that is what loading a shared library means.
pub fn load(path: &Path) -> Result<&'static LoadedPlugin, PluginError> {
    let path_buf = path.to_path_buf();
    let descriptor_err = |reason: DescriptorError| PluginError::Descriptor {
        path: path_buf.clone(),
        reason,
    };
    // RTLD_NOW: a missing dependency fails here, not at some later call. RTLD_LOCAL: one
    // plugin's symbols never satisfy another's.
    // SAFETY: loading runs the library's initialisers; that is the contract of a plugin.
    let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map_err(|e| {
        PluginError::Open {
            path: path_buf.clone(),
            reason: dl_text(&e),
        }
    })?;
    // SAFETY: the symbol's type is fixed by the ABI version in its name.
    let entry: EntryFn = match unsafe { lib.get::<EntryFn>(abi::ENTRY_SYMBOL) } {
        Ok(sym) => *sym,
        Err(_) => return Err(missing_entry(&lib, path)),
    };
    // SAFETY: a v1 entry point takes nothing and returns a descriptor pointer (or NULL).
    let ptr = unsafe { entry() };
    if ptr.is_null() {
        return Err(descriptor_err(DescriptorError::NullEntry));
    }
    if !ptr.is_aligned() {
        return Err(descriptor_err(DescriptorError::Misaligned));
    }
    // Version and size first: they are the only fields every version has in one place.
    // SAFETY: any descriptor starts with these two u32s.
    let (version, size) = unsafe {
        let head = ptr as *const u32;
        (head.read(), head.add(1).read())
    };
    if version != abi::ABI_VERSION {
        return Err(PluginError::Abi {
            path: path_buf,
            found: version,
            expected: abi::ABI_VERSION,
        });
    }
    let known = std::mem::size_of::<Descriptor>();
    if (size as usize) < known {
        return Err(descriptor_err(DescriptorError::TooSmall {
            size,
            version,
            known,
        }));
    }
    // SAFETY: version and size say the plugin's struct holds at least ours; we read only
    // our prefix of it (the struct may grow at the end).
    let desc = unsafe { ptr.read() };
    let text = |p: *const c_char, what: &'static str| -> Result<String, PluginError> {
        if p.is_null() {
            return Err(descriptor_err(DescriptorError::Null(what)));
        }
        // SAFETY: the ABI says NUL-terminated and valid while the library is loaded.
        unsafe { CStr::from_ptr(p) }
            .to_str()
            .map(str::to_string)
            .map_err(|_| descriptor_err(DescriptorError::NotUtf8(what)))
    };
    let name = text(desc.name, "name")?;
    let plugin_version = text(desc.version, "version")?;
    let manifest_text = text(desc.manifest, "manifest")?;
    let manifest: Manifest = serde_json::from_str(&manifest_text)
        .map_err(|e| descriptor_err(DescriptorError::Manifest(e.into())))?;
    let free_buf = desc
        .free_buf
        .ok_or_else(|| descriptor_err(DescriptorError::Null("free_buf")))?;
    check(&name, &manifest, &desc).map_err(descriptor_err)?;
    Ok(Box::leak(Box::new(LoadedPlugin {
        path: path.to_path_buf(),
        name,
        version: plugin_version,
        abi: version,
        manifest,
        desc,
        free_buf,
        _lib: lib,
    })))
}

/// No v1 entry: a plugin for another ABI version (say so), or not a plugin at all.
fn missing_entry(lib: &Library, path: &Path) -> PluginError {
    for found in (1..=16).filter(|v| *v != abi::ABI_VERSION) {
        let symbol = format!("contree_plugin_v{found}");
        // SAFETY: only looked up, never called.
        if unsafe { lib.get::<*const ()>(&symbol) }.is_ok() {
            return PluginError::Abi {
                path: path.to_path_buf(),
                found,
                expected: abi::ABI_VERSION,
            };
        }
    }
    PluginError::NoEntry {
        path: path.to_path_buf(),
        symbol: abi::ENTRY_SYMBOL.to_string(),
    }
}

fn valid_formatter_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// The manifest makes sense and the functions it needs are there.
fn check(name: &str, manifest: &Manifest, desc: &Descriptor) -> Result<(), DescriptorError> {
    if name.trim().is_empty() {
        return Err(DescriptorError::EmptyName);
    }
    let mut seen = std::collections::BTreeSet::new();
    for f in &manifest.formatters {
        if !valid_formatter_name(&f.name) {
            return Err(DescriptorError::FormatterName(f.name.clone()));
        }
        if RESERVED_FORMATTERS.contains(&f.name.as_str()) {
            return Err(DescriptorError::BuiltinFormatter(f.name.clone()));
        }
        if !seen.insert(f.name.as_str()) {
            return Err(DescriptorError::FormatterTwice(f.name.clone()));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in &manifest.resolvers {
        if !crate::attach::resolve::looks_like_scheme(&r.scheme) {
            return Err(DescriptorError::SchemeName(r.scheme.clone()));
        }
        if r.parts == 0 || r.parts > 16 {
            return Err(DescriptorError::SchemeParts {
                scheme: r.scheme.clone(),
                parts: r.parts,
            });
        }
        if !seen.insert(r.scheme.as_str()) {
            return Err(DescriptorError::SchemeTwice(r.scheme.clone()));
        }
    }
    let formatter_calls = [
        ("formatter_new", desc.formatter_new.is_some()),
        ("formatter_begin", desc.formatter_begin.is_some()),
        ("formatter_chunk", desc.formatter_chunk.is_some()),
        ("formatter_finish", desc.formatter_finish.is_some()),
        ("formatter_free", desc.formatter_free.is_some()),
    ];
    if !manifest.formatters.is_empty() {
        if let Some((missing, _)) = formatter_calls.iter().find(|(_, present)| !present) {
            return Err(DescriptorError::NoFormatterCall(missing));
        }
    }
    if !manifest.resolvers.is_empty() && desc.resolve.is_none() {
        return Err(DescriptorError::NoResolve);
    }
    Ok(())
}

/// What a successful call handed back.
pub struct Answer {
    pub out: Vec<u8>,
    pub err: Vec<u8>,
}

impl LoadedPlugin {
    pub(crate) fn descriptor(&self) -> &Descriptor {
        &self.desc
    }

    /// "formatter 'junit' chunk", "resolve", ...: for messages.
    fn error(&self, call: &str, status: i32, message: String) -> PluginError {
        let message = if message.is_empty() {
            "no message".to_string()
        } else {
            message
        };
        if status == abi::STATUS_PANIC {
            PluginError::Panicked {
                name: self.name.clone(),
                path: self.path.clone(),
                call: call.to_string(),
                message,
            }
        } else {
            PluginError::Failed {
                name: self.name.clone(),
                path: self.path.clone(),
                call: call.to_string(),
                message: if status == abi::STATUS_ERROR {
                    message
                } else {
                    format!("unknown status {status}: {message}")
                },
            }
        }
    }

    /// Makes one call: `f` gets a zeroed reply to pass on and returns the status. Every
    /// buffer in the reply is copied and handed back to the plugin's `free_buf`.
    pub(crate) fn call(
        &self,
        what: &str,
        f: impl FnOnce(*mut Reply) -> i32,
    ) -> Result<Answer, PluginError> {
        let mut reply = Reply::EMPTY;
        let status = f(&mut reply);
        let out = self.take(&mut reply.out);
        let err = self.take(&mut reply.err);
        let message = self.take(&mut reply.message);
        if status == abi::STATUS_OK {
            Ok(Answer { out, err })
        } else {
            Err(self.error(what, status, String::from_utf8_lossy(&message).into_owned()))
        }
    }

    fn take(&self, buf: &mut Buf) -> Vec<u8> {
        if buf.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: a non-NULL buffer in a reply is `len` bytes the plugin allocated for us;
        // we copy it and give it back exactly once.
        let bytes = unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec();
        unsafe { (self.free_buf)(buf.ptr, buf.len) };
        *buf = Buf::EMPTY;
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_shared_library_is_named_with_the_loader_reason() {
        let (tmp, junk) = crate::paths::temp_path("junk.so");
        std::fs::write(&junk, "not an ELF file").unwrap();
        let err = load(&junk).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "plugin '{}' cannot be loaded as a shared library: ",
                junk.display()
            )),
            "{err}"
        );
        let missing = tmp.path().join("missing.so");
        assert!(load(&missing)
            .unwrap_err()
            .to_string()
            .contains("No such file"));
    }

    #[test]
    fn formatter_names_are_plain() {
        assert!(valid_formatter_name("junit"));
        assert!(valid_formatter_name("my-log.v2_x"));
        assert!(!valid_formatter_name("JUnit"));
        assert!(!valid_formatter_name("-x"));
        assert!(!valid_formatter_name(""));
        assert!(!valid_formatter_name("a b"));
    }
}
