//! `contree shell`: a prompt on the session. Each line becomes the `contree` invocation it
//! stands for (a bare line: `contree run -s -- LINE`; `contree ARGS…`: itself) and goes
//! through the same parse and dispatch as one typed at the system's shell, with this
//! shell's global flags unless the line gives its own. Nothing here runs a command itself.
//!
//! On a terminal the line editor is rustyline (history, Ctrl-C drops the line, Ctrl-D
//! leaves). Otherwise lines are read from stdin, so a script or a test can drive the shell,
//! and every command gets /dev/null as its stdin: the rest of the script is not its input.

use super::args::{Cli, Command};
use crate::error::{CommandError, CommandResult};
use crate::paths::Paths;
use crate::shell::complete::{self, Catalog};
use crate::shell::history::History;
use crate::shell::{classify, Builtin, Line, ShellError};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Write};
use std::os::fd::{AsFd, AsRawFd};

const PROMPT: &str = "contree> ";

const HELP: &str = "\
A line is run in the session's sandbox as `contree run --shell -- LINE` would run it: its
changes become the session's next image. A line starting with `contree` runs that command
(`contree ls /etc`, `contree session rollback`, `contree run -D -- make`).

Built-ins:
  cd [DIR]      change the session's working directory (no DIR: print it)
  pwd           print the session's working directory
  history [N]   the last N lines typed (all without N), kept across shells
  help          this text
  exit [CODE]   leave (also `quit`, or Ctrl-D); the code defaults to the last line's

Tab completes built-ins, `contree` commands and flags, paths of the session's image, tags
and branches. Ctrl-C drops the line being typed, or cancels the command that runs.
";

pub fn shell(globals: Cli) -> CommandResult<i32> {
    let paths = Paths::from_env();
    let history = History::open(&paths.data.join("shell_history"))?;
    let mut shell = Shell {
        globals,
        history,
        status: 0,
    };
    if std::io::stdin().is_terminal() {
        shell.on_terminal()
    } else {
        shell.on_pipe()
    }
}

struct Shell {
    /// The flags `contree [GLOBALS] shell` was started with.
    globals: Cli,
    history: History,
    /// The last line's exit code.
    status: i32,
}

/// What to do after a line.
enum Next {
    Continue,
    Exit(i32),
}

impl Shell {
    fn on_terminal(&mut self) -> CommandResult<i32> {
        use rustyline::error::ReadlineError;
        let config = rustyline::Config::builder()
            .auto_add_history(false)
            .completion_type(rustyline::CompletionType::List)
            .build();
        let editor_error =
            |e: ReadlineError| CommandError::new(crate::error::Kind::Io, format!("shell: {e}"));
        let mut editor: rustyline::Editor<Helper, rustyline::history::DefaultHistory> =
            rustyline::Editor::with_config(config).map_err(editor_error)?;
        editor.set_helper(Some(Helper {
            globals: self.inherited(&[]),
        }));
        for line in self.history.lines() {
            let _ = editor.add_history_entry(line.as_str());
        }
        loop {
            crate::interrupt::restore_default();
            let line = match editor.readline(PROMPT) {
                Ok(line) => line,
                // Ctrl-C: the line is dropped, the shell stays.
                Err(ReadlineError::Interrupted) => continue,
                Err(ReadlineError::Eof) => return Ok(self.status),
                Err(e) => return Err(editor_error(e)),
            };
            if self.remember(&line) {
                let _ = editor.add_history_entry(line.trim());
            }
            if let Next::Exit(code) = self.line(&line) {
                return Ok(code);
            }
        }
    }

    fn on_pipe(&mut self) -> CommandResult<i32> {
        let io_error = |what: &str, e: std::io::Error| {
            CommandError::new(crate::error::Kind::Io, format!("shell: {what}: {e}"))
        };
        // The script keeps the real stdin; the commands get /dev/null at fd 0.
        let script = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| io_error("duplicating stdin", e))?;
        let null = std::fs::File::open("/dev/null").map_err(|e| io_error("/dev/null", e))?;
        nix::unistd::dup2(null.as_raw_fd(), 0).map_err(|e| io_error("stdin", e.into()))?;
        let mut lines = std::io::BufReader::new(std::fs::File::from(script));
        let mut line = String::new();
        loop {
            crate::interrupt::restore_default();
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) => return Ok(self.status),
                Ok(_) => {}
                Err(e) => return Err(io_error("reading a line", e)),
            }
            self.remember(&line);
            if let Next::Exit(code) = self.line(&line) {
                return Ok(code);
            }
        }
    }

    /// Adds the line to the history file; a failure is said, and the shell goes on.
    fn remember(&mut self, line: &str) -> bool {
        match self.history.push(line) {
            Ok(added) => added,
            Err(e) => {
                crate::warn!("{e}");
                false
            }
        }
    }

    fn line(&mut self, line: &str) -> Next {
        // A signal now cancels the command (each dispatch installs the handler again).
        crate::interrupt::install();
        let _ = crate::interrupt::take();
        let argv: Vec<String> = match classify(line) {
            Ok(Line::Empty) => return Next::Continue,
            Ok(Line::Run(text)) => ["run", "-s", "--", &text].map(String::from).to_vec(),
            Ok(Line::Contree(words)) => words,
            Ok(Line::Builtin(builtin)) => match builtin {
                Builtin::Exit(code) => return Next::Exit(code.unwrap_or(self.status)),
                Builtin::Help => {
                    print!("{HELP}");
                    self.status = 0;
                    return Next::Continue;
                }
                Builtin::History(n) => {
                    let lines = self.history.lines();
                    let from = lines.len().saturating_sub(n.unwrap_or(lines.len()));
                    for (i, entry) in lines.iter().enumerate().skip(from) {
                        println!("{:5}  {entry}", i + 1);
                    }
                    self.status = 0;
                    return Next::Continue;
                }
                Builtin::Pwd => vec!["cd".into()],
                Builtin::Cd(dir) => std::iter::once("cd".to_string()).chain(dir).collect(),
            },
            Err(e) => {
                self.status = fail(&e.into());
                return Next::Continue;
            }
        };
        self.status = self.dispatch(&argv);
        let _ = std::io::stdout().flush();
        Next::Continue
    }

    /// `contree ARGV…` in this process, as `cli::main` would run it.
    fn dispatch(&self, words: &[String]) -> i32 {
        let mut argv: Vec<OsString> = vec!["contree".into()];
        argv.extend(words.iter().map(OsString::from));
        let cli = match self.parse(&argv) {
            Ok(cli) => cli,
            Err(e)
                if !e.use_stderr()
                    || e.kind()
                        == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
            {
                let _ = e.print();
                return if e.use_stderr() {
                    crate::error::exit::USAGE
                } else {
                    0
                };
            }
            Err(e) => return fail(&super::usage::usage_error(&e, &argv)),
        };
        if cli.version {
            super::print_version();
            return 0;
        }
        if matches!(cli.command, Some(Command::Shell)) {
            return fail(&ShellError::Nested.into());
        }
        match super::dispatch(cli) {
            Ok(code) => code,
            Err(e) => fail(&e),
        }
    }

    fn parse(&self, argv: &[OsString]) -> Result<Cli, clap::Error> {
        let matches = Cli::command().try_get_matches_from(argv)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        let given: Vec<&str> = GLOBALS
            .iter()
            .copied()
            .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
            .collect();
        inherit(&mut cli, &self.globals, &given);
        Ok(cli)
    }

    /// A copy of the shell's own global flags, for the completion's context.
    fn inherited(&self, given: &[&str]) -> Cli {
        let mut cli = Cli::parse_from(["contree", "shell"]);
        inherit(&mut cli, &self.globals, given);
        cli
    }
}

/// The shell's global flags that a line takes over where it does not give them, and
/// `inherit`, which takes them: their clap ids are their field names in `Cli`.
macro_rules! inherited_globals {
    ($($flag:ident),*) => {
        const GLOBALS: &[&str] = &[$(stringify!($flag)),*];

        /// Takes the shell's global flags into a line's `cli` where the line did not give
        /// them (`given`: the ids it did). Plugins add up.
        fn inherit(cli: &mut Cli, shell: &Cli, given: &[&str]) {
            $(if !given.contains(&stringify!($flag)) {
                cli.$flag.clone_from(&shell.$flag);
            })*
            let own = std::mem::take(&mut cli.plugins);
            cli.plugins = shell.plugins.iter().cloned().chain(own).collect();
        }
    };
}

inherited_globals!(profile, token, url, project, config, log_level, format, session);

/// Says `e` as `contree` would, and gives its exit code.
fn fail(e: &CommandError) -> i32 {
    super::report(e);
    e.exit_code()
}

/// rustyline's side: completion (the rest of its traits keep their defaults).
struct Helper {
    globals: Cli,
}

impl rustyline::completion::Completer for Helper {
    type Candidate = rustyline::completion::Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Self::Candidate>)> {
        let catalog = SessionCatalog::open(&self.globals);
        let (start, candidates) = complete::complete(line, pos, &Cli::command(), &catalog);
        let pairs = candidates
            .into_iter()
            .map(|c| rustyline::completion::Pair {
                display: c.display,
                replacement: c.replacement,
            })
            .collect();
        Ok((start, pairs))
    }
}

impl rustyline::hint::Hinter for Helper {
    type Hint = String;
}
impl rustyline::highlight::Highlighter for Helper {}
impl rustyline::validate::Validator for Helper {}
impl rustyline::Helper for Helper {}

/// Completion's view of the session, opened for one Tab: the context a `contree ls` of the
/// shell would get. Without one (no store, no profile), only the definitions complete.
struct SessionCatalog {
    ctx: Option<crate::context::Context>,
}

impl SessionCatalog {
    fn open(globals: &Cli) -> SessionCatalog {
        let ctx = super::context_of(
            globals,
            crate::format::Format::Default,
            super::Open::Recovered,
        );
        SessionCatalog { ctx: ctx.ok() }
    }

    fn image(&self) -> Option<(&crate::context::Context, String)> {
        let ctx = self.ctx.as_ref()?;
        let info = ctx.session().ok()??;
        Some((ctx, info.current_image))
    }
}

impl Catalog for SessionCatalog {
    fn cwd(&self) -> String {
        self.ctx
            .as_ref()
            .and_then(|ctx| ctx.sessions.cwd(&ctx.session_key).ok().flatten())
            .unwrap_or_else(|| "/".into())
    }

    fn list_dir(&self, dir: &str) -> Vec<(String, bool)> {
        let Some((ctx, image)) = self.image() else {
            return Vec::new();
        };
        let Ok(list) = ctx.backend.list_dir(&image, dir) else {
            return Vec::new();
        };
        list.files
            .into_iter()
            .filter_map(|f| {
                let name = f.path.trim_end_matches('/').rsplit('/').next()?.to_string();
                (!name.is_empty()).then_some((name, f.is_dir))
            })
            .collect()
    }

    fn tags(&self) -> Vec<String> {
        let Some(ctx) = &self.ctx else {
            return Vec::new();
        };
        ctx.backend
            .images(&crate::backend::ImageFilter::default())
            .map(|images| images.into_iter().filter_map(|i| i.tag).collect())
            .unwrap_or_default()
    }

    fn branches(&self) -> Vec<String> {
        let Some(ctx) = &self.ctx else {
            return Vec::new();
        };
        ctx.sessions
            .branches(&ctx.session_key)
            .map(|b| b.into_iter().map(|(name, _)| name).collect())
            .unwrap_or_default()
    }

    fn topics(&self) -> Vec<String> {
        super::agent::topic_names()
    }
}
