//! `contree exec OP -- CMD…`: one more command in a running operation's sandbox (a
//! detached `run -d`, say: start a server, then exec its tests into the same instance),
//! locally or through a profile. Its output streams live from the operation's events of
//! its spid; the exit code is the command's.

use super::args::ExecFlags;
use super::ops::resolve_refs;
use crate::context::{backend_err, Context};
use crate::error::{exit, CommandError, CommandResult, Kind};
use crate::wire::{ExecSpec, StdinRepr};
use std::io::{IsTerminal, Read, Write};

pub fn exec(ctx: &Context, flags: ExecFlags) -> CommandResult<i32> {
    let ops = resolve_refs(ctx, std::slice::from_ref(&flags.op))?;
    let [op] = ops.as_slice() else {
        return Err(CommandError::user(format!(
            "'{}' names {} operations; exec goes into one",
            flags.op,
            ops.len()
        )));
    };
    let spec = spec(&flags)?;
    let spid = ctx.backend.exec(op, &spec)?;
    follow(ctx, op, spid)
}

/// The request: the words as a command and its arguments, or with `--shell` joined into
/// one shell expression; piped stdin goes with it whole.
fn spec(flags: &ExecFlags) -> CommandResult<ExecSpec> {
    let (command, args) = match flags.command.split_first() {
        None => return Err(CommandError::user("Give the command to run after `--`")),
        Some(_) if flags.shell => (flags.command.join(" "), None),
        Some((first, rest)) => (first.clone(), Some(rest.to_vec())),
    };
    let mut env = std::collections::BTreeMap::new();
    for pair in &flags.env {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CommandError::user(format!(
                "-e takes NAME=VALUE, not '{pair}'"
            )));
        };
        env.insert(k.to_string(), v.to_string());
    }
    let stdin = if std::io::stdin().is_terminal() {
        None
    } else {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| CommandError::new(Kind::Io, format!("reading stdin: {e}")))?;
        let (value, encoding) = crate::wire::encode_bytes(&bytes);
        Some(StdinRepr {
            value,
            encoding: encoding.to_string(),
            close: None,
        })
    };
    Ok(ExecSpec {
        command,
        args,
        shell: flags.shell,
        env: (!env.is_empty()).then_some(env),
        cwd: flags.cwd.clone(),
        stdin,
        truncate_output_at: flags.truncate_output_at,
        ..ExecSpec::default()
    })
}

/// Writes the subprocess's output as it comes; its exit code (128 + signal when killed).
fn follow(ctx: &Context, op: &str, spid: u32) -> CommandResult<i32> {
    let mut events = ctx.backend.events(op, true).map_err(backend_err)?;
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    while let Some(item) = events.next_event().map_err(backend_err)? {
        let event = &item.event;
        if event.kind == "completion" {
            break;
        }
        if event.spid != Some(spid) {
            continue;
        }
        let written = match event.kind.as_str() {
            "stdout" => write_all(&mut out, &item.bytes),
            "stderr" => write_all(&mut err, &item.bytes),
            "exit" => {
                let int = |k: &str| event.data.get(k).and_then(|v| v.as_i64()).unwrap_or(-1);
                let (code, signal) = (int("code"), int("signal"));
                return Ok(if signal > 0 { 128 + signal } else { code } as i32);
            }
            _ => Ok(()),
        };
        match written {
            Ok(()) => {}
            // Whoever read our output is gone (`exec … | head`), as a pipe's writer ends.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(exit::BROKEN_PIPE),
            Err(e) => return Err(CommandError::new(Kind::Io, format!("writing output: {e}"))),
        }
    }
    Err(CommandError::new(
        Kind::Io,
        format!("operation {op} ended without the end of subprocess {spid}"),
    ))
}

fn write_all(w: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).and_then(|_| w.flush())
}
