-- require-timeout.lua: refuse runs that do not set a timeout with -t, or set one above a
-- maximum, so nothing can hold a sandbox for the default two minutes by accident (or
-- forever by intent).
--
-- Event: pre-spawn. `req.timeout` is nil when no -t was given (docs/hooks.md).
-- Maximum: CONTREE_MAX_TIMEOUT seconds in the CLI's environment, default 3600.
-- A refused run exits with code 77 before anything is uploaded or started.

local max = tonumber(contree.env("CONTREE_MAX_TIMEOUT") or "") or 3600

contree.on("pre-spawn", function(req)
  if req.timeout == nil then
    contree.abort(("no timeout given: add -t SECONDS (at most %d)"):format(max))
  end
  if req.timeout > max then
    contree.abort(("timeout %ds is over the maximum of %ds"):format(req.timeout, max))
  end
  -- nil: the request goes on unchanged
end)
