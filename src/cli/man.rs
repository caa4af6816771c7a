//! `contree man`: the man page, generated from the clap definitions like the completions.

use crate::error::{CommandError, CommandResult, Kind};
use crate::format::to_stdout;
use clap::CommandFactory;

pub fn man() -> CommandResult<i32> {
    let cmd = super::args::Cli::command();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .map_err(|e| CommandError::new(Kind::Internal, format!("rendering the man page: {e}")))?;
    to_stdout(|out| out.write_all(&buf))?;
    Ok(0)
}
