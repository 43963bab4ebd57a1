--- `sonde once [--format text|json] SCRIPT|MANIFEST [NAME...]`: run each
-- probe (or each one named) once, without thresholds, hooks or services,
-- and print the results.  Exit 0 when all succeeded (warnings included),
-- 1 when one failed, 3 when one was unknown and none failed, 2 on a
-- script error, 128 + the signal when SIGTERM or SIGINT ends it first.
-- What the script's top level started (tasks, timers) is ended once the
-- results are in; `os.exit` and the signals kill the probes' commands.
-- It is a child subreaper: what the commands left behind outside their
-- process group (`setsid`, a double fork) gets SIGTERM once the results
-- are in (or at the signal) and SIGKILL 1 s later, and the command exits
-- once none is left (a second SIGTERM or SIGINT: SIGKILL at once).
-- @module sonde.host.once
local core = require "sonde.core"
local config = require "sonde.config"
local task = require "sonde.task"
local log = require "sonde.log"
local json = require "sonde.json"
local common = require "sonde.host.common"

local M = {}

--- Run the command.
-- @tparam table source see sonde.host.common.source
-- @tparam table names probe names (all when empty)
-- @tparam string format "text" or "json"
-- @treturn integer exit code
function M.main(source, names, format)
  core.set_subreaper(true)
  common.set_arg(source.name, {})
  common.guard_exit()
  task.hosted = true
  local cfg, e = config.load(source.load, {}, { name = source.name })
  if not cfg then common.err("%s", common.load_error(e)) return 2 end
  -- the results end it; so do SIGTERM and SIGINT, which cancel the
  -- probes (their commands are killed)
  local S = core.signals
  local results, interrupted, finished
  local function finish()
    if finished then return end
    finished = true
    cfg:stop()
    -- what escaped the commands' groups: SIGTERM, SIGKILL after 1 s; the
    -- signals are watched until it is done
    core.end_orphans(1, nil, function()
      for _, x in ipairs { S.TERM, S.INT } do core.on_signal(x, nil) end
    end)
  end
  local function interrupt(sig)
    if finished then                -- ending the escaped: SIGKILL them now
      core.end_orphans(0)
      return
    end
    interrupted = sig
    finish()
  end
  core.on_signal(S.TERM, interrupt)
  core.on_signal(S.INT, interrupt)
  local ok, nerr = cfg:once(names, function(r)
    results = r
    finish()
  end)
  if not ok then
    finish()
    common.err("%s", nerr)
    return 2
  end
  common.log_errors()
  task.run()
  if interrupted then return 128 + interrupted end
  if not results then
    common.err("%s: the script stopped its probes before they finished",
      source.name)
    return 2
  end
  local failed, unknown = false, false
  for _, r in ipairs(results) do
    if r.status == "failure" then failed = true end
    if r.status == "unknown" then unknown = true end
    if format == "json" then
      io.stdout:write(json.encode {
        probe = r.probe, kind = r.kind, status = r.status, reason = r.reason,
        output = r.output, duration = r.duration, time = r.time,
        exit_code = r.exit_code, signal = r.signal,
        http_status = r.http_status, grpc_status = r.grpc_status,
        serving_status = r.serving_status, rcode = r.rcode, error = r.error,
      }, "\n")
    else
      io.stdout:write(string.format("%-20s %-8s %-16s %7.3fs  %s\n", r.probe,
        r.status, r.reason, r.duration, log.escape_text(r.output or "")))
    end
  end
  io.stdout:flush()
  return failed and 1 or unknown and 3 or 0
end

return M
