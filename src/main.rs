//! `contree`: parse, run, exit. Everything else lives in the library.

fn main() {
    std::process::exit(contree::cli::main());
}
