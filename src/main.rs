//! `contree`: run commands in snapshotting sandboxes.

mod attach;
mod backend;
mod cli;
mod context;
mod engine;
mod error;
mod format;
mod interrupt;
mod log;
mod paths;
mod run;
mod session;
mod wire;

fn main() {
    std::process::exit(cli::main());
}
