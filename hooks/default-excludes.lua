-- default-excludes.lua: team-wide excludes for every directory attached with --file, on
-- top of the user's --file-excludes and contree's built-in ones (dot files, .git,
-- node_modules, __pycache__, build, dist, ...).
--
-- Event: pre-attach (before anything is read or uploaded). Edit TEAM_EXCLUDES to taste;
-- the patterns are fnmatch globs matched against every path component.

local TEAM_EXCLUDES = { "*.log", "*.tmp", "*.swp", "*.bak", "target", "coverage" }

contree.on("pre-attach", function(plan)
  if #plan.files == 0 then
    return nil -- nothing attached: no change
  end
  for _, pattern in ipairs(TEAM_EXCLUDES) do
    table.insert(plan.excludes, pattern)
  end
  return plan
end)
