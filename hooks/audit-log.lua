-- audit-log.lua: append one JSON line per finished run to an audit log: who ran what, on
-- which image, how it ended and how much output it wrote.
--
-- Event: on-exit (after the output is printed; it cannot change the result). Detached runs
-- (-d) are not followed by the CLI, so they are not logged here (docs/hooks.md).
-- File: $CONTREE_AUDIT_LOG, else audit.log in contree's data directory.
-- A failure to write warns once; the run's exit code stays the command's.

local path = contree.env("CONTREE_AUDIT_LOG") or (contree.data_dir .. "/audit.log")

contree.on("on-exit", function(r)
  local req = r.request
  local line = contree.json.encode {
    time = os.date("!%Y-%m-%dT%H:%M:%SZ"),
    user = contree.env("USER") or contree.env("LOGNAME"),
    op = r.op,
    status = r.status,
    exit_code = r.exit_code,
    timed_out = r.timed_out,
    duration = r.duration,
    image = req.image,
    result_image = r.result_image,
    command = req.command,
    args = req.args,
    cwd = req.cwd,
    disposable = req.disposable,
    stdout_bytes = r.stdout_bytes,
    stderr_bytes = r.stderr_bytes,
  }
  contree.append(path, line .. "\n")
end)
