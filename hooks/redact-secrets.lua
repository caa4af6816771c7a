-- redact-secrets.lua: mask secrets in a run's output before they reach the terminal,
-- a log or a JSON record.
--
-- Event: on-output, with the native redactor (`contree.redact`): the scanning runs in
-- Rust, so it costs little even on large output, and a secret split across two output
-- chunks is still masked (see docs/hooks.md).
--
-- Masks, on stdout and stderr:
--   * AWS access key ids: AKIA, ASIA, ABIA or ACCA followed by 16 of [A-Z0-9];
--   * `Bearer <token>` (any case): the token becomes [REDACTED], the word stays;
--   * the values of the CLI's environment variables named in CONTREE_REDACT_ENV
--     (comma-separated, e.g. CONTREE_REDACT_ENV=GITHUB_TOKEN,NPM_TOKEN); values shorter
--     than 4 bytes are ignored, they would mask too much.
--
-- Install: copy to $CONTREE_HOME/hooks/ (or ~/.config/contree/hooks/), or pass
-- `--hook hooks/redact-secrets.lua` to `contree run`.

local literals = {}
for name in (contree.env("CONTREE_REDACT_ENV") or ""):gmatch("[^,%s]+") do
  local value = contree.env(name)
  if value and #value >= 4 then
    literals[#literals + 1] = value
  end
end

contree.on("on-output", contree.redact { "aws", "bearer", literals = literals })
