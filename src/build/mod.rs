//! `contree build`: a Dockerfile applied step by step on the session's backend. Each RUN
//! is one run on the previous step's image; COPY and ADD add a layer of files to it
//! without a sandbox where the backend can (`Backend::add_files`, the local engine), else
//! attach their files to a run of `true` the way `run -F` does. Each step's result is the
//! next step's image; FROM picks or pulls an
//! image; ENV, ARG, WORKDIR and USER only change what later steps get. Every step's
//! image is remembered in the build cache (`cache`), so an unchanged rebuild runs
//! nothing. It never prints through the run formatters or hooks: a build is not a run.

pub mod cache;
mod copy;
pub mod dockerfile;
mod sources;

use crate::attach::{digest_files, AttachError};
use crate::backend::{Backend, BackendError, Content, Placement, Spawn, StdinSource};
use crate::session::{SessionError, SessionStore};
use crate::wire::{FileRef, SpawnRequest, Status};
use cache::Cache;
use dockerfile::{Command, Copy, Directive, Dockerfile, Instruction, ParseError};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What `build` was asked, already parsed.
#[derive(Debug, Clone)]
pub struct BuildArgs {
    /// The context directory (absolute).
    pub context: PathBuf,
    pub dockerfile: PathBuf,
    pub tag: Option<String>,
    /// `--build-arg K=V`, in order.
    pub build_args: Vec<(String, String)>,
    pub no_cache: bool,
    /// Seconds each RUN may take.
    pub timeout: u64,
}

/// What a build needs from its command: where to run, where to remember.
pub struct Env<'a> {
    pub backend: &'a dyn Backend,
    pub sessions: &'a SessionStore,
    /// The data dir (the digest cache, scratch files of COPY --from).
    pub data: &'a Path,
}

impl Env<'_> {
    /// A directory of the build's own in the data directory, removed when dropped; `what`
    /// says what it is for an error (`a scratch directory`).
    fn temp_dir(&self, prefix: &str, what: &str) -> Result<tempfile::TempDir, BuildError> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.data)
            .map_err(|source| BuildError::Io {
                what: format!("making {what} in {}", self.data.display()),
                source,
            })
    }
}

/// The end of a build that ran to its last step.
#[derive(Debug)]
pub struct Built {
    pub image: String,
    pub steps: usize,
    /// Steps whose image came from the cache.
    pub cached: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read the Dockerfile {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse { path: String, source: ParseError },
    /// A step that cannot be done as written (its number and text say which).
    #[error("Step {step}/{total} ({text}): {what}")]
    Step {
        step: usize,
        total: usize,
        text: String,
        what: String,
    },
    /// A RUN (or the run placing COPY's files) that ended badly: the build's exit code.
    #[error("Step {step}/{total} failed: {text}: {why}")]
    Failed {
        step: usize,
        total: usize,
        text: String,
        why: String,
        code: i32,
    },
    /// A COPY/ADD source that is not there (wrapped in `Step` by the executor).
    #[error("{0}")]
    Source(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("interrupted")]
    Interrupted,
}

impl BuildError {
    /// The exit code a failed step gives the build, if this is one.
    pub fn step_exit_code(&self) -> Option<i32> {
        match self {
            BuildError::Failed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// What a stage has come to so far.
struct Stage {
    image: String,
    /// The build session's entry of `image` (the next recorded step's parent).
    entry: Option<i64>,
    /// The cache key of the last step.
    hash: String,
    args: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    workdir: String,
    user: Option<String>,
}

impl Stage {
    /// What `$VAR` means here: ENV over ARG.
    fn vars(&self) -> BTreeMap<String, String> {
        let mut vars = self.args.clone();
        vars.extend(self.env.clone());
        vars
    }
}

struct Builder<'a> {
    env: &'a Env<'a>,
    args: &'a BuildArgs,
    cache: Cache<'a>,
    total: usize,
    step: usize,
    cached: usize,
    /// Global ARGs (before the first FROM), `--build-arg` applied.
    global: BTreeMap<String, String>,
    build_args: BTreeMap<String, String>,
    /// Finished stages: alias (if any) and final state.
    done: Vec<(Option<String>, Stage)>,
}

pub fn build(env: &Env<'_>, args: &BuildArgs) -> Result<Built, BuildError> {
    let shown = args.dockerfile.display().to_string();
    let text = std::fs::read_to_string(&args.dockerfile).map_err(|source| BuildError::Read {
        path: shown.clone(),
        source,
    })?;
    let file = dockerfile::parse(&text).map_err(|source| BuildError::Parse {
        path: shown,
        source,
    })?;
    let mut builder = Builder {
        env,
        args,
        cache: Cache::new(env.sessions, &args.context),
        total: file.step_count(),
        step: 0,
        cached: 0,
        global: BTreeMap::new(),
        build_args: args.build_args.iter().cloned().collect(),
        done: Vec::new(),
    };
    builder.run(&file)?;
    let (_, last) = builder.done.pop().expect("a Dockerfile has a stage");
    Ok(Built {
        image: last.image,
        steps: builder.total,
        cached: builder.cached,
    })
}

impl Builder<'_> {
    fn run(&mut self, file: &Dockerfile) -> Result<(), BuildError> {
        for ins in &file.global_args {
            self.header(ins);
            if let Directive::Arg(pairs) = &ins.directive {
                let vars = self.global.clone();
                for (name, default) in pairs {
                    let value = match (self.build_args.get(name), default) {
                        (Some(v), _) => v.clone(),
                        (None, Some(d)) => self.expand(ins, d, &vars)?,
                        (None, None) => String::new(),
                    };
                    self.global.insert(name.clone(), value);
                }
            }
        }
        for stage in &file.stages {
            self.header(&stage.from);
            let mut state = self.from(&stage.from)?;
            for ins in &stage.steps {
                self.header(ins);
                self.step(ins, &mut state)?;
            }
            self.done.push((stage.alias().map(str::to_string), state));
        }
        Ok(())
    }

    fn header(&mut self, ins: &Instruction) {
        self.step += 1;
        eprintln!("Step {}/{}: {}", self.step, self.total, ins.text);
    }

    fn fail(&self, ins: &Instruction, what: impl std::fmt::Display) -> BuildError {
        BuildError::Step {
            step: self.step,
            total: self.total,
            text: ins.text.clone(),
            what: what.to_string(),
        }
    }

    fn expand(
        &self,
        ins: &Instruction,
        raw: &str,
        vars: &BTreeMap<String, String>,
    ) -> Result<String, BuildError> {
        dockerfile::expand(raw, vars).map_err(|e| self.fail(ins, e))
    }

    /// A cached image for `hash`, when the cache may be used and the image still exists.
    fn lookup(&mut self, hash: &str) -> Result<Option<cache::Hit>, BuildError> {
        if self.args.no_cache {
            return Ok(None);
        }
        let Some(hit) = self.cache.lookup(hash)? else {
            return Ok(None);
        };
        match self.env.backend.resolve_image(&hit.image) {
            Ok(_) => {
                self.cached += 1;
                eprintln!(" ---> Using cache {}", hit.image);
                Ok(Some(hit))
            }
            Err(BackendError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn from(&mut self, ins: &Instruction) -> Result<Stage, BuildError> {
        let Directive::From { image, .. } = &ins.directive else {
            unreachable!("a stage starts with FROM")
        };
        let reference = self.expand(ins, image, &self.global.clone())?;
        let fresh = |image: String, entry: Option<i64>, hash: String| Stage {
            image,
            entry,
            hash,
            args: BTreeMap::new(),
            env: BTreeMap::new(),
            workdir: "/".into(),
            user: None,
        };
        // An earlier stage, by name or index: its image, and its chain goes on.
        let earlier = self.done.iter().enumerate().find(|(i, (alias, _))| {
            alias.as_deref() == Some(reference.to_lowercase().as_str())
                || reference == i.to_string()
        });
        if let Some((_, (_, stage))) = earlier {
            eprintln!(" ---> {}", stage.image);
            return Ok(fresh(stage.image.clone(), stage.entry, stage.hash.clone()));
        }
        if reference == "scratch" {
            let hash = cache::chain("", &json!({"from": "scratch"}));
            if let Some(hit) = self.lookup(&hash)? {
                return Ok(fresh(hit.image, Some(hit.entry), hash));
            }
            let image = self.scratch(ins)?;
            let entry = self.cache.record(&hash, None, &image, &ins.text)?;
            eprintln!(" ---> {image}");
            return Ok(fresh(image, Some(entry), hash));
        }
        let image = self.resolve_or_pull(ins, &reference)?;
        let hash = cache::chain("", &json!({"from": image}));
        let entry = match self.cache.lookup(&hash)? {
            Some(hit) => hit.entry,
            None => self.cache.record(&hash, None, &image, &ins.text)?,
        };
        eprintln!(" ---> {image}");
        Ok(fresh(image, Some(entry), hash))
    }

    /// An empty image: an empty directory imported (the local engine only; a /v1 API
    /// imports from registries only, so `scratch` is refused there).
    fn scratch(&self, ins: &Instruction) -> Result<String, BuildError> {
        let dir = self.env.temp_dir("build-scratch-", "an empty directory")?;
        match self.env.backend.import_local(dir.path(), None) {
            Ok(image) => Ok(image),
            Err(BackendError::Unsupported(_)) => Err(self.fail(
                ins,
                "FROM scratch needs the local engine: this backend cannot make an empty image",
            )),
            Err(e) => Err(e.into()),
        }
    }

    fn resolve_or_pull(&self, ins: &Instruction, reference: &str) -> Result<String, BuildError> {
        match self.env.backend.resolve_image(reference) {
            Ok(image) => Ok(image),
            Err(BackendError::NotFound(e)) => {
                let bare = reference.strip_prefix("docker://").unwrap_or(reference);
                if crate::wire::reference::Reference::parse(bare).is_none() {
                    return Err(self.fail(ins, e));
                }
                eprintln!(" ---> pulling {reference}");
                let pulled = self.env.backend.pull_image(&crate::backend::Pull {
                    reference,
                    credentials: Default::default(),
                    tag: Some(bare),
                    timeout: None,
                });
                pulled.map_err(|e| self.fail(ins, format!("image '{reference}': {e}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn step(&mut self, ins: &Instruction, state: &mut Stage) -> Result<(), BuildError> {
        match &ins.directive {
            Directive::From { .. } => unreachable!("FROM starts a stage"),
            Directive::Skipped(name) => {
                crate::warn!("{name} is not supported by contree build; skipped");
            }
            Directive::Arg(pairs) => {
                for (name, default) in pairs {
                    let value = match (self.build_args.get(name), default) {
                        (Some(v), _) => v.clone(),
                        (None, Some(d)) => self.expand(ins, d, &state.vars())?,
                        // Redeclared without a value: the global one, as Docker does.
                        (None, None) => self.global.get(name).cloned().unwrap_or_default(),
                    };
                    state.args.insert(name.clone(), value);
                }
            }
            Directive::Env(pairs) => {
                // All of one ENV line's values see the variables as they were before it.
                let vars = state.vars();
                for (k, v) in pairs {
                    let value = self.expand(ins, v, &vars)?;
                    state.env.insert(k.clone(), value);
                }
            }
            Directive::Workdir(path) => {
                let path = self.expand(ins, path, &state.vars())?;
                state.workdir = absolute(&state.workdir, &path);
            }
            Directive::User(user) => state.user = Some(self.expand(ins, user, &state.vars())?),
            Directive::Run(command) => self.run_step(ins, state, command)?,
            Directive::Copy(copy) => self.copy_step(ins, state, copy, false)?,
            Directive::Add(copy) => self.copy_step(ins, state, copy, true)?,
        }
        Ok(())
    }

    fn run_step(
        &mut self,
        ins: &Instruction,
        state: &mut Stage,
        command: &Command,
    ) -> Result<(), BuildError> {
        // The shell expands RUN's variables itself, from its environment (as Docker does).
        let (program, argv) = match command {
            Command::Shell(text) => ("/bin/sh".to_string(), vec!["-c".into(), text.clone()]),
            Command::Exec(words) => {
                let vars = state.vars();
                let words = words
                    .iter()
                    .map(|w| dockerfile::substitute(w, &vars).map_err(|e| self.fail(ins, e)))
                    .collect::<Result<Vec<_>, _>>()?;
                let (first, rest) = words.split_first().expect("an exec form has a program");
                (first.clone(), rest.to_vec())
            }
        };
        let hash = cache::chain(
            &state.hash,
            &json!({
                "run": [&program, &argv],
                "env": state.vars(),
                "workdir": state.workdir,
                "user": state.user,
                "parent": state.image,
            }),
        );
        if let Some(hit) = self.lookup(&hash)? {
            advance(state, hit.image, hit.entry, hash);
            return Ok(());
        }
        let (uid, gid) = match &state.user {
            Some(user) => self.ids(ins, &state.image, user)?,
            None => (None, None),
        };
        let req = SpawnRequest {
            image: state.image.clone(),
            command: program,
            args: Some(argv),
            env: Some(state.vars()),
            cwd: Some(state.workdir.clone()),
            uid,
            gid,
            timeout: Some(self.args.timeout),
            // As much of a step's output as the backend keeps: through the API, its cap.
            truncate_output_at: Some(if self.env.backend.name() == "local" {
                1 << 30
            } else {
                crate::wire::MAX_TRUNCATE_AT
            }),
            hostname: "contree-build".into(),
            ..Default::default()
        };
        let image = self.spawn(ins, &req)?;
        self.built(ins, state, image, hash)
    }

    /// A step made `image`: remembered in the cache under `hash`, said, and the stage's
    /// image from now on.
    fn built(
        &mut self,
        ins: &Instruction,
        state: &mut Stage,
        image: String,
        hash: String,
    ) -> Result<(), BuildError> {
        let entry = self.cache.record(&hash, state.entry, &image, &ins.text)?;
        eprintln!(" ---> {image}");
        advance(state, image, entry, hash);
        Ok(())
    }

    /// `uid[:gid]` as numbers, or names from the image's /etc/passwd and /etc/group.
    fn ids(
        &self,
        ins: &Instruction,
        image: &str,
        spec: &str,
    ) -> Result<(Option<u32>, Option<u32>), BuildError> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let lookup = |file: &str, name: &str| -> Result<(u32, Option<u32>), BuildError> {
            if let Ok(id) = name.parse() {
                return Ok((id, None));
            }
            let mut text = String::new();
            if let Ok((mut r, _)) = self.env.backend.read_file(image, file) {
                let _ = std::io::Read::read_to_string(&mut r, &mut text);
            }
            text.lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 3 && f[0] == name)
                .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok())))
                .ok_or_else(|| self.fail(ins, format!("no '{name}' in the image's {file}")))
        };
        let (uid, primary) = lookup("/etc/passwd", user)?;
        let gid = match group {
            Some(g) => lookup("/etc/group", g)?.0,
            // A user's primary group when named, else the uid's number, as Docker does.
            None => primary.unwrap_or(uid),
        };
        Ok((Some(uid), Some(gid)))
    }

    /// Runs `req` to its end with its output on ours; the result image, or the step's
    /// failure (its exit code becomes the build's).
    fn spawn(&self, ins: &Instruction, req: &SpawnRequest) -> Result<String, BuildError> {
        let backend = self.env.backend;
        let _ = std::io::stdout().flush();
        let spawn = Spawn {
            req,
            stdin: StdinSource::Null,
            registered: &mut |_| Ok(()),
        };
        let op = backend.spawn_followed(spawn, true)?;
        let mut stream = backend.events(&op, true)?;
        let (mut code, mut timed_out, mut status, mut result, mut error) =
            (None, false, None, None, None);
        let mut interrupted = false;
        loop {
            let item = match stream.next_event() {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(BackendError::Interrupted) => {
                    interrupted = true;
                    let _ = backend.cancel(&op);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let ev = &item.event;
            let text = |k: &str| ev.data.get(k).and_then(|v| v.as_str()).map(String::from);
            match ev.kind.as_str() {
                "stdout" if !item.bytes.is_empty() => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&item.bytes).and_then(|_| out.flush());
                }
                "stderr" if !item.bytes.is_empty() => {
                    let _ = std::io::stderr().write_all(&item.bytes);
                }
                "exit" if ev.spid == Some(1) => {
                    code = ev.data.get("code").and_then(|c| c.as_i64());
                    timed_out = ev.data.get("timed_out").and_then(|t| t.as_bool()) == Some(true);
                }
                "completion" => {
                    status = text("status").as_deref().and_then(Status::parse);
                    result = text("result_image_uuid");
                    error = text("error");
                }
                _ => {}
            }
        }
        if interrupted {
            return Err(BuildError::Interrupted);
        }
        let failed = |why: String, code: i32| BuildError::Failed {
            step: self.step,
            total: self.total,
            text: ins.text.clone(),
            why,
            code,
        };
        match (code, result) {
            _ if timed_out => Err(failed(
                format!("timed out after {}s (-t/--timeout)", self.args.timeout),
                crate::error::exit::KILLED,
            )),
            (Some(0), Some(image)) if status == Some(Status::Success) => Ok(image),
            (Some(c), _) if c < 0 => Err(failed(
                format!("killed (operation {op})"),
                crate::error::exit::KILLED,
            )),
            (Some(c), _) if c != 0 => Err(failed(
                format!("exit code {c} (operation {op})"),
                (c & 0xff) as i32,
            )),
            _ => Err(failed(
                format!(
                    "operation {op} ended with status {}{}",
                    status.map(|s| s.as_str()).unwrap_or("unknown"),
                    error.map(|e| format!(": {e}")).unwrap_or_default()
                ),
                1,
            )),
        }
    }
}

fn advance(state: &mut Stage, image: String, entry: i64, hash: String) {
    state.image = image;
    state.entry = Some(entry);
    state.hash = hash;
}

/// `path` against the working directory `cwd`, normalised (`.` and `..` resolved).
fn absolute(cwd: &str, path: &str) -> String {
    crate::imagepath::resolve(cwd, path)
}
