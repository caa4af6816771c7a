//! The command layer: parse flags once, build the context, dispatch to a command, turn the
//! result into an exit code. Commands stay thin; the work happens in `run`, `engine`, ...

pub(crate) mod agent;
pub mod args;
mod auth;
mod braces;
mod build;
mod completions;
mod doctor;
mod exec;
mod export;
mod file;
mod gc;
mod grep;
mod history;
mod hooks;
mod images;
mod inspect;
mod manpage;
mod ops;
mod plugins;
mod pull;
mod session;
mod session_args;
mod shell;
mod skill;
mod usage;
mod when;

use crate::context::Context;
use crate::engine::LocalEngine;
use crate::error::{exit, CommandError, CommandResult};
use crate::format::Format;
use crate::paths::Paths;
use crate::session::SessionStore;
use args::{Cli, Command};
use clap::Parser;

pub fn main() -> i32 {
    crate::log::trace("start");
    // The supervisor is started by our own CLI with fixed arguments: skip clap, which
    // costs a noticeable part of a short run's start-up.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.len() == 5 && argv[1] == crate::engine::supervisor::SUPERVISE {
        return crate::engine::supervisor::supervise(
            std::path::Path::new(&argv[2]),
            &argv[4].to_string_lossy(),
            std::path::Path::new(&argv[3]),
        );
    }
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        // Help and version are clap's to print; so is the help shown for a bare `contree`.
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            return code;
        }
        Err(e) => {
            let e = usage::usage_error(&e, &argv);
            report(&e);
            return e.exit_code();
        }
    };
    crate::log::trace("parsed");
    if cli.version {
        print_version();
        return 0;
    }
    let r = dispatch(cli);
    crate::log::trace("dispatched");
    match r {
        Ok(code) => code,
        Err(e) => {
            report(&e);
            e.exit_code()
        }
    }
}

fn print_version() {
    println!(
        "contree {} ({} {})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    );
}

fn report(e: &CommandError) {
    if e.plain {
        eprintln!("{}", e.message);
    } else {
        crate::log::emit(crate::log::Level::Error, &e.message);
    }
    for hint in &e.hints {
        eprintln!("hint: {hint}");
    }
}

fn dispatch(mut cli: Cli) -> CommandResult<i32> {
    let level = crate::log::parse_level(&cli.log_level).ok_or_else(|| {
        CommandError::user(format!(
            "unknown log level '{}' (expected debug, info, warning, error or critical)",
            cli.log_level
        ))
    })?;
    crate::log::set_level(level);
    let Some(command) = cli.command.take() else {
        return Ok(0);
    };
    if let Command::Supervise { store, data, op } = &command {
        return Ok(crate::engine::supervisor::supervise(
            std::path::Path::new(store),
            op,
            std::path::Path::new(data),
        ));
    }
    let format: Format = match cli.format.parse() {
        Ok(format) => format,
        // `run` also takes plugin formats; it checks the name itself (`ctx.output`).
        Err(_) if matches!(command, Command::Run(_)) => Format::Default,
        Err(e) => return Err(CommandError::user(e.to_string())),
    };
    if let Command::Auth(flags) = command {
        return auth::auth(flags, cli.config.as_deref());
    }
    // Neither do completions and the man page: they come from the clap definitions.
    match command {
        Command::Completions { shell } => return completions::completions(shell),
        Command::Manpage => return manpage::manpage(),
        Command::Agent { topic } => return agent::agent(topic.as_deref()),
        Command::Skill { command } => return skill::skill(format, command),
        // The shell builds each line's context as that line's command would.
        Command::Shell => return shell::shell(cli),
        _ => {}
    }
    // Hook commands never need the engine (or root).
    if let Command::Hooks { command } = command {
        return hooks::hooks(format, command);
    }
    // `serve` runs the engine itself, without a session.
    if let Command::Serve(flags) = command {
        return serve(flags);
    }
    // Neither do plugin commands.
    if let Command::Plugins { command } = command {
        return plugins::plugins(format, &plugins_of(&cli), command);
    }
    let open = match command {
        Command::Run(_) => Open::ForRun,
        Command::Doctor { .. } => Open::AsIs,
        _ => Open::Recovered,
    };
    let ctx = context_of(&cli, format, open)?;
    crate::log::trace("context ready");
    // Runs of this session that ended after their CLI died reach it before anything else.
    crate::run::settle::settle(&ctx)?;
    crate::interrupt::install();
    match command {
        Command::Run(flags) => crate::run::run(&ctx, run_args(flags)),
        Command::Use(flags) => session::use_image(&ctx, flags),
        Command::Images(flags) => images::images(&ctx, flags),
        Command::Tag(flags) => images::tag(&ctx, flags),
        Command::Ps(flags) => ops::list(&ctx, flags),
        Command::Show(flags) => ops::show(&ctx, flags),
        Command::Kill(flags) => ops::cancel(&ctx, flags),
        // Bare `wait`: the session's own pending runs, applied to it (`session wait`).
        Command::Wait(flags) if flags.ops.is_empty() && !flags.all => {
            history::session_wait(&ctx, &[])
        }
        Command::Wait(flags) => ops::wait(&ctx, flags),
        Command::Exec(flags) => exec::exec(&ctx, flags),
        Command::Operation { command } => ops::dispatch(&ctx, command),
        Command::Session { command } => session::session(&ctx, command),
        Command::Ls { path } => inspect::ls(&ctx, path.as_deref()),
        Command::Grep(flags) => grep::grep(&ctx, flags),
        Command::Build(flags) => build::build(&ctx, flags),
        Command::Cat { path } => inspect::cat(&ctx, &path),
        Command::Cp { path, dest } => inspect::cp(&ctx, &path, &dest),
        Command::Export(flags) => export::export(&ctx, flags),
        Command::File { command } => file::file(&ctx, command),
        Command::Cd { path } => session::cd(&ctx, path.as_deref()),
        Command::Env { items, delete } => session::env(&ctx, &items, delete),
        Command::Gc { dry_run } => gc::gc(&ctx, dry_run),
        Command::Doctor { repair } => doctor::doctor(&ctx, repair),
        Command::Supervise { .. }
        | Command::Hooks { .. }
        | Command::Plugins { .. }
        | Command::Completions { .. }
        | Command::Manpage
        | Command::Agent { .. }
        | Command::Skill { .. }
        | Command::Shell
        | Command::Serve(_)
        | Command::Auth(_) => Ok(0),
    }
}

fn serve(flags: args::ServeFlags) -> CommandResult<i32> {
    // Before the server's threads: see `rootless`.
    crate::rootless::enter()?;
    crate::server::serve(crate::server::ServeOptions {
        listen: flags.listen,
        tokens: flags.tokens.map(std::path::PathBuf::from),
        paths: Paths::from_env(),
        max_body: flags.max_body,
        max_upload: flags.max_upload,
        max_running: flags.max_running,
        max_pending: flags.max_pending,
        events_max_age: flags.events_max_age,
        events_max_bytes: flags.events_max_bytes,
    })?;
    Ok(0)
}

fn plugins_of(cli: &Cli) -> crate::plugin::Plugins {
    let explicit = cli.plugins.iter().map(std::path::PathBuf::from).collect();
    crate::plugin::Plugins::new(explicit, &Paths::from_env())
}

/// The context the global flags of `cli` select (its command aside).
fn context_of(cli: &Cli, format: Format, open: Open) -> CommandResult<Context> {
    let remote = auth::selected_from(
        &cli.profile,
        &cli.url,
        &cli.token,
        &cli.project,
        cli.config.as_deref(),
    )?;
    context(
        format,
        &cli.format,
        plugins_of(cli),
        cli.session.as_deref(),
        remote,
        open,
    )
}

/// How a command opens the local store.
enum Open {
    /// After recovering from crashed runs (most commands).
    Recovered,
    /// For `run`: recovery is left to the supervisor (see `LocalEngine::open_for_run`).
    ForRun,
    /// As it is: `doctor` reports what recovery would repair.
    AsIs,
}

fn context(
    format: Format,
    output: &str,
    plugins: crate::plugin::Plugins,
    session: Option<&str>,
    remote: Option<crate::api::Profile>,
    open: Open,
) -> CommandResult<Context> {
    let paths = Paths::from_env();
    if let Err(e) = paths.make_private() {
        crate::warn!(
            "cannot make the data dir {} private to you: {e}",
            paths.data.display()
        );
    }
    if let Some(profile) = remote {
        let backend = crate::api::RemoteBackend::new(&profile)?
            .with_upload_cache(&paths.data.join("uploads.db"));
        let sessions = SessionStore::open(&paths.session_db(&profile.name))?;
        return Ok(Context {
            backend: Box::new(backend),
            sessions,
            session_key: SessionStore::resolve_key(session, &profile.name),
            format,
            output: output.to_string(),
            plugins,
            paths,
        });
    }
    // An ordinary user's engine lives in a user namespace of its own (see `rootless`),
    // entered while this process has one thread.
    crate::rootless::enter()?;
    // A run on this machine needs the privileges to build its sandbox: said up front.
    if matches!(open, Open::ForRun) {
        if let Some(why) = crate::privileges::missing() {
            return Err(CommandError::new(crate::error::Kind::Unavailable, why)
                .hint("run contree as root, or use a ConTree API: `contree auth --url URL --token TOKEN --type jwt`"));
        }
    }
    // One after the other, on this thread: opening them in parallel (or the store in the
    // background while clap parses) measured slower, 5.4 → 5.8 ms for `run -D -- true`;
    // the CLI also forks its supervisor, which wants a process that never had threads.
    let sessions = SessionStore::open(&paths.session_db("local"));
    let engine = match open {
        Open::ForRun => LocalEngine::open_for_run(&paths),
        Open::AsIs => LocalEngine::open_as_is(&paths),
        Open::Recovered => LocalEngine::open(&paths),
    };
    let engine = engine?.keeper(Box::new(gc::Sessions {
        session_db: paths.session_db("local"),
        cache_dir: paths.data.join("cache"),
    }));
    crate::log::trace("engine open");
    let sessions = sessions?;
    let session_key = SessionStore::resolve_key(session, "local");
    Ok(Context {
        backend: Box::new(engine),
        sessions,
        session_key,
        format,
        output: output.to_string(),
        plugins,
        paths,
    })
}

fn run_args(f: args::RunFlags) -> crate::run::RunArgs {
    crate::run::RunArgs {
        timeout: f.timeout.unwrap_or(crate::run::DEFAULT_TIMEOUT),
        timeout_given: f.timeout.is_some(),
        cwd: f.cwd,
        env: f.env,
        hostname: f.hostname,
        disposable: f.disposable,
        interpreter: f.interpreter,
        shell: f.shell,
        files: f.files,
        file_excludes: f.file_excludes,
        truncate: f.truncate,
        preserve_env: f.preserve_env,
        detach: f.detach,
        use_image: f.use_image,
        no_network: f.no_network,
        words: f.words,
        hooks: f.hooks,
        no_hooks: f.no_hooks,
        limits: crate::wire::ResourcesLimits {
            max_layer_bytes: f.max_layer_bytes,
            max_memory_bytes: f.memory,
            max_pids: f.pids,
            max_cpus: f.cpus,
        },
    }
}
