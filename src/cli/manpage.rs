//! `contree manpage`: the man page (roff), generated from the clap definitions like the
//! completions. (`contree man` is `agent`'s alias, as in the official client.)

use crate::error::{CommandError, CommandResult, Kind};
use crate::format::to_stdout;
use clap::CommandFactory;

pub fn manpage() -> CommandResult<i32> {
    let cmd = super::args::Cli::command();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .map_err(|e| CommandError::new(Kind::Internal, format!("rendering the man page: {e}")))?;
    to_stdout(|out| out.write_all(&buf))?;
    Ok(0)
}
