//! `contree build [CONTEXT]`: flags → `build::BuildArgs`, the build, then the session moved
//! to its image (like `use`) and the image tagged. A failed step exits with its code.

use super::args::BuildFlags;
use crate::build::{self, BuildArgs, BuildError};
use crate::context::Context;
use crate::error::{CommandError, CommandResult};
use crate::run::request::parse_env_item;

pub fn build(ctx: &Context, flags: BuildFlags) -> CommandResult<i32> {
    let context = std::path::absolute(&flags.context)
        .map_err(|e| CommandError::user(format!("build context '{}': {e}", flags.context)))?;
    if !context.is_dir() {
        return Err(CommandError::user(format!(
            "build context '{}' is not a directory",
            flags.context
        )));
    }
    let dockerfile = match &flags.dockerfile {
        Some(path) => std::path::PathBuf::from(path),
        None => context.join("Dockerfile"),
    };
    let build_args = flags
        .build_args
        .iter()
        .map(|item| parse_env_item(item))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CommandError::user(format!("--build-arg: {e}")))?;
    let args = BuildArgs {
        context,
        dockerfile,
        tag: flags.tag,
        build_args,
        no_cache: flags.no_cache,
        timeout: flags.timeout,
    };
    let env = build::Env {
        backend: ctx.backend.as_ref(),
        sessions: &ctx.sessions,
        data: &ctx.paths.data,
    };
    let built = match build::build(&env, &args) {
        Ok(built) => built,
        Err(e @ BuildError::Failed { .. }) => {
            crate::error!("{e}");
            return Ok(e.step_exit_code().unwrap_or(1));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(tag) = &args.tag {
        ctx.backend.tag(&built.image, tag)?;
    }
    let title = format!("build {}", args.context.display());
    ctx.sessions
        .set_image(&ctx.session_key, &built.image, "build", &title, None)?;
    crate::info!(
        "Built image {}{} ({} steps, {} from the cache)",
        built.image,
        args.tag
            .as_deref()
            .map(|t| format!(" tagged {t}"))
            .unwrap_or_default(),
        built.steps,
        built.cached
    );
    println!("{}", built.image);
    Ok(0)
}
