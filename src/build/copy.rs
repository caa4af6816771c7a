//! COPY and ADD: their sources (the context, an earlier stage or image, a URL) placed on the
//! previous step's image, as one new layer where the backend can make it without a sandbox
//! (`Backend::add_files`), else attached to a run of `true`.

use super::*;

impl Builder<'_> {
    pub(super) fn copy_step(
        &mut self,
        ins: &Instruction,
        state: &mut Stage,
        copy: &Copy,
        add: bool,
    ) -> Result<(), BuildError> {
        let vars = state.vars();
        let word = |w: &String| {
            if copy.exec_form {
                dockerfile::substitute(w, &vars)
            } else {
                dockerfile::expand(w, &vars)
            }
            .map_err(|e| self.fail(ins, e))
        };
        let sources = copy
            .sources
            .iter()
            .map(word)
            .collect::<Result<Vec<_>, _>>()?;
        let dest = word(&copy.dest)?;
        // A directory when written as one (`dir/`, `.`) or when the image has one there.
        let as_dir = dest.ends_with('/')
            || dest == "."
            || dest == ".."
            || dest.ends_with("/.")
            || dest.ends_with("/..")
            || sources::is_dir(
                self.env.backend,
                &state.image,
                &absolute(&state.workdir, &dest),
            )
            .unwrap_or(false);
        let dest = if as_dir {
            format!("{}/", absolute(&state.workdir, &dest).trim_end_matches('/'))
        } else {
            absolute(&state.workdir, &dest)
        };
        // ADD's URLs are fetched here, on this machine, into a scratch dir that lives until
        // the step's files are uploaded; the rest come from the context.
        let (urls, sources): (Vec<String>, Vec<String>) =
            sources.into_iter().partition(|s| add && s.contains("://"));
        let mut fetched = None;
        let mut downloads = Vec::new();
        for url in &urls {
            if fetched.is_none() {
                fetched = Some(self.env.temp_dir("build-add-", "a scratch directory")?);
            }
            let dir = fetched.as_ref().map(|d| d.path()).unwrap_or(self.env.data);
            let source = sources::from_url(url, &dest, dir, self.args.timeout)
                .map_err(|e| self.fail(ins, e))?;
            downloads.push(source);
        }
        // Scratch files of COPY --from live until the step's files are uploaded.
        let scratch;
        let (files, extra, from) = match &copy.from {
            None => {
                let mut files = if sources.is_empty() {
                    Vec::new()
                } else {
                    sources::from_context(&self.args.context, &sources, &dest)
                        .map_err(|e| self.fail(ins, e))?
                };
                files.extend(downloads);
                (files, Vec::new(), None)
            }
            Some(from) if add => {
                return Err(self.fail(ins, format!("ADD does not take --from={from}")))
            }
            Some(from) => {
                let from = self.expand(ins, from, &vars)?;
                let image = self.source_image(ins, &from)?;
                scratch = self.env.temp_dir("build-from-", "a scratch directory")?;
                let (files, extra) =
                    sources::from_image(self.env.backend, &image, &sources, &dest, scratch.path())
                        .map_err(|e| self.fail(ins, e))?;
                (files, extra, Some(image))
            }
        };
        let (uid, gid) = match &copy.chown {
            Some(chown) => {
                let chown = self.expand(ins, chown, &vars)?;
                let (u, g) = self.ids(ins, &state.image, &chown)?;
                (u.unwrap_or(0), g.or(u).unwrap_or(0))
            }
            None => (0, 0),
        };
        let chmod = match &copy.chmod {
            Some(mode) => Some(
                u32::from_str_radix(&self.expand(ins, mode, &vars)?, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| self.fail(ins, format!("--chmod={mode} is not octal")))?,
            ),
            None => None,
        };
        let shas = self.digest(&files)?;
        let placed: Vec<_> = files
            .iter()
            .zip(&shas)
            .map(|(f, sha)| json!([f.dest, sha, chmod.unwrap_or(f.mode), uid, gid]))
            .collect();
        let mode = |m: u32| chmod.unwrap_or(m);
        // Symlinks and empty directories (COPY --from only) are in the key when there are
        // any, so that a copy of files only keeps the key it always had.
        let extra: Vec<Placement> = extra
            .iter()
            .filter_map(|e| match e {
                // The root itself: there already.
                sources::Extra::Dir { dest, .. } if dest.trim_matches('/').is_empty() => None,
                sources::Extra::Dir { dest, mode: m } => Some(Placement {
                    path: dest.clone(),
                    uid,
                    gid,
                    mode: mode(*m),
                    content: Content::Dir,
                }),
                sources::Extra::Symlink { dest, target } => Some(Placement {
                    path: dest.clone(),
                    uid,
                    gid,
                    mode: 0o777,
                    content: Content::Symlink(target.clone()),
                }),
            })
            .collect();
        let mut step = json!({
            "copy": placed,
            "from": from,
            "parent": state.image,
        });
        if !extra.is_empty() {
            step["extra"] = extra
                .iter()
                .map(|p| match &p.content {
                    Content::Symlink(target) => json!([p.path, "symlink", target, p.uid, p.gid]),
                    _ => json!([p.path, "dir", p.mode, p.uid, p.gid]),
                })
                .collect();
        }
        let hash = cache::chain(&state.hash, &step);
        if let Some(hit) = self.lookup(&hash)? {
            advance(state, hit.image, hit.entry, hash);
            return Ok(());
        }
        let wanted: Vec<(PathBuf, String)> = files
            .iter()
            .zip(&shas)
            .map(|(f, sha)| (f.host.clone(), sha.clone()))
            .collect();
        let uploaded = self.env.backend.put_files(&wanted)?;
        let mut map = BTreeMap::new();
        for ((file, _), (uuid, _)) in files.iter().zip(&shas).zip(uploaded) {
            map.insert(
                file.dest.clone(),
                FileRef {
                    uuid,
                    uid,
                    gid,
                    mode: crate::attach::mode_string(chmod.unwrap_or(file.mode)),
                },
            );
        }
        // Placed without a sandbox where the backend can (the local engine): in the order
        // (and so the layer) the run below would attach them.
        let mut placements: Vec<Placement> = map
            .iter()
            .map(|(path, file)| Placement {
                path: path.clone(),
                uid,
                gid,
                mode: file.permissions().unwrap_or(0o644),
                content: Content::File(file.uuid.clone()),
            })
            .collect();
        placements.extend(extra.iter().cloned());
        match self.env.backend.add_files(&state.image, &placements) {
            Ok(image) => {
                return self.built(ins, state, image, hash);
            }
            Err(BackendError::Unsupported(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if !extra.is_empty() {
            crate::warn!(
                "{} symlinks or empty directories of the source are not carried: this backend places regular files only",
                extra.len()
            );
        }
        // Else the files join the image as a run's attachments; the command itself does
        // nothing, so it needs a `true` in the image (which FROM scratch has not).
        let req = SpawnRequest {
            image: state.image.clone(),
            command: "true".into(),
            files: Some(map),
            timeout: Some(self.args.timeout),
            hostname: "contree-build".into(),
            networking: Some(crate::wire::Networking { enabled: false }),
            ..Default::default()
        };
        let image = self.spawn(ins, &req)?;
        self.built(ins, state, image, hash)
    }

    /// COPY --from's image: an earlier stage by name or index, else an image reference.
    fn source_image(&self, ins: &Instruction, from: &str) -> Result<String, BuildError> {
        let lower = from.to_lowercase();
        for (i, (alias, stage)) in self.done.iter().enumerate() {
            if alias.as_deref() == Some(lower.as_str()) || from == i.to_string() {
                return Ok(stage.image.clone());
            }
        }
        self.env
            .backend
            .resolve_image(from)
            .map_err(|e| self.fail(ins, format!("--from={from}: {e}")))
    }

    fn digest(&self, files: &[sources::Source]) -> Result<Vec<String>, BuildError> {
        let paths: Vec<&Path> = files.iter().map(|f| f.host.as_path()).collect();
        Ok(digest_files(self.env.data, &paths)?)
    }
}
