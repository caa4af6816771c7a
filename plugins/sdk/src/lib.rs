//! `contree-plugin`: write `contree` output formatters and attachment resolvers as shared
//! libraries, in safe Rust.
//!
//! A plugin is a `cdylib` crate that implements [`Formatter`] and/or [`Resolver`] and
//! exports them with [`export_plugin!`]:
//!
//! ```ignore
//! use contree_plugin::{export_plugin, Emit, Formatter, FormatterDef, Plugin, RunResult, Stream};
//!
//! #[derive(Default)]
//! struct Count(usize);
//!
//! impl Formatter for Count {
//!     fn chunk(&mut self, _stream: Stream, bytes: &[u8]) -> Result<Emit, String> {
//!         self.0 += bytes.len();
//!         Ok(Emit::none())
//!     }
//!     fn finish(&mut self, _result: &RunResult) -> Result<Emit, String> {
//!         Ok(Emit::stdout(format!("{} bytes\n", self.0)))
//!     }
//! }
//!
//! export_plugin!(Plugin {
//!     name: "count",
//!     version: env!("CARGO_PKG_VERSION"),
//!     formatters: &[FormatterDef { name: "count", live: false, new: || Box::new(Count::default()) }],
//!     resolvers: &[],
//! });
//! ```
//!
//! The macro exports the ABI's entry symbol and wraps every call in `catch_unwind`: a
//! panic becomes an error the host reports, never an unwind across the boundary. The
//! host uses this same crate for the ABI types ([`abi`]) and messages ([`msg`]); the C
//! view of the ABI is `contree_plugin.h` next to this crate.
//!
//! Build plugins with unwinding panics (the default): with `panic = "abort"` a panic
//! takes contree down with it.

pub mod abi;
pub mod msg;

#[doc(hidden)]
pub mod __private;

pub use msg::{ResolveRequest, Resolved, ResolvedFile, RunInfo, RunResult};

/// Which of the run's streams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Bytes for contree to write to its own stdout and stderr.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Emit {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Emit {
    pub fn none() -> Emit {
        Emit::default()
    }
    pub fn stdout(bytes: impl Into<Vec<u8>>) -> Emit {
        Emit {
            stdout: bytes.into(),
            stderr: Vec::new(),
        }
    }
    pub fn stderr(bytes: impl Into<Vec<u8>>) -> Emit {
        Emit {
            stdout: Vec::new(),
            stderr: bytes.into(),
        }
    }
}

/// An output formatter (`contree run -o NAME`): sees the run as a stream and answers each
/// step with bytes to write. One instance per run; calls come from one thread, in order:
/// `begin`, `chunk`..., `finish`. An `Err` stops the formatter and is reported by contree
/// naming the plugin.
pub trait Formatter {
    fn begin(&mut self, info: &RunInfo) -> Result<Emit, String> {
        let _ = info;
        Ok(Emit::none())
    }
    fn chunk(&mut self, stream: Stream, bytes: &[u8]) -> Result<Emit, String>;
    fn finish(&mut self, result: &RunResult) -> Result<Emit, String>;
}

/// An attachment resolver (`--file SCHEME:REST...`): turns REST into the files to attach.
/// contree places them (`/inst`), applies the spec's owner and mode, the excludes, dedup and
/// the upload cache exactly as for local files.
pub trait Resolver: Sync {
    fn resolve(&self, request: &ResolveRequest) -> Result<Resolved, String>;
}

/// One formatter a plugin provides.
pub struct FormatterDef {
    /// The name for `-o`: lowercase letters, digits, `-`, `_` and `.`.
    pub name: &'static str,
    /// See [`msg::FormatterDecl::live`].
    pub live: bool,
    /// Makes a fresh formatter for one run.
    pub new: fn() -> Box<dyn Formatter>,
}

/// One resolver a plugin provides.
pub struct ResolverDef {
    /// The scheme before the first `:`: two or more of lowercase letters, digits, `+`, `-`,
    /// `.`, starting with a letter (a single letter would be a Windows drive).
    pub scheme: &'static str,
    /// How many `:`-separated pieces REST takes (see [`msg::ResolverDecl::parts`]).
    pub parts: u32,
    /// How to write a spec, for error messages (`git:REV:PATH`).
    pub usage: &'static str,
    pub resolver: &'static dyn Resolver,
}

/// Everything a plugin exports; give it to [`export_plugin!`].
pub struct Plugin {
    pub name: &'static str,
    pub version: &'static str,
    pub formatters: &'static [FormatterDef],
    pub resolvers: &'static [ResolverDef],
}

/// Exports a [`Plugin`] as this library's `contree_plugin_v1` entry point.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:expr) => {
        /// The contree plugin entry point (ABI v1).
        #[no_mangle]
        pub extern "C" fn contree_plugin_v1() -> *const $crate::abi::Descriptor {
            static PLUGIN: $crate::Plugin = $plugin;
            $crate::__private::descriptor(&PLUGIN)
        }
    };
}
