--- `sonde check SCRIPT|MANIFEST`: load and validate without starting
-- anything; list the services and probes.  Exit 0, or 2 with the error
-- (at the user's file and line).
--
-- The script's top level runs, but probers, `sonde.sleep` and timers
-- called there start nothing (a task that waits on one just stops there),
-- and the load is ended at once.  A manifest's pod is listed first: its
-- restartPolicy, grace, and its containers in their order, each with its
-- kind (init, sidecar, app).
-- @module sonde.host.check
local config = require "sonde.config"
local task = require "sonde.task"
local common = require "sonde.host.common"

local M = {}

--- Run the command.
-- @tparam table source see sonde.host.common.source
-- @treturn integer exit code
function M.main(source)
  common.set_arg(source.name, {})
  task.hosted = true           -- sonde.run() in the script waits, runs nothing
  local cfg, e = config.load(source.load, {}, { name = source.name,
    dry = true })
  if not cfg then common.err("%s", common.load_error(e)) return 2 end
  cfg:stop()
  print(string.format("%s: %s, %s", source.name,
    common.plural(#cfg.services, "service"), common.plural(#cfg.probes, "probe")))
  for _, p in ipairs(cfg.pods) do
    local list = {}
    for i, c in ipairs(p.containers) do list[i] = c.kind .. " " .. c.name end
    print(string.format("pod     %-20s restartPolicy=%s grace=%gs: %s", p.name,
      p.restart_policy, p.grace, table.concat(list, ", ")))
  end
  for _, s in ipairs(cfg.services) do
    -- one line per entry: a multi-line argument (a script given to sh -c)
    -- shows its line ends and tabs as \n and \t
    local cmd = table.concat(s.opts.argv, " "):gsub("[\n\t]",
      { ["\n"] = "\\n", ["\t"] = "\\t" })
    print(string.format("service %-20s %s", s.name, cmd))
  end
  for _, p in ipairs(cfg.probes) do
    print(string.format("probe   %-20s %-9s %-10s period=%gs timeout=%gs "
      .. "initial_delay=%gs success_threshold=%d failure_threshold=%d%s",
      p.name, p.kind, p.handler, p.period, p.timeout, p.initial_delay,
      p.success_threshold, p.failure_threshold,
      p.service and (" service=" .. p.service.name) or ""))
  end
  return 0
end

return M
