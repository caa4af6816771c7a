//! `contree completions SHELL`: generated from the clap definitions, so they never drift
//! from the real flags.

use crate::error::CommandResult;
use crate::format::to_stdout;
use clap::CommandFactory;

pub fn completions(shell: clap_complete::Shell) -> CommandResult<i32> {
    let mut cmd = super::args::Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "contree", &mut buf);
    to_stdout(|out| out.write_all(&buf))?;
    Ok(0)
}
