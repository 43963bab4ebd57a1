--- What the host's commands share: what a command line names (a script
-- or a Kubernetes manifest), the script's `arg`, and how errors read.
-- @module sonde.host.common
local core = require "sonde.core"
local log = require "sonde.log"
local task = require "sonde.task"
local pod = require "sonde.pod"

local M = {}

--- Write `sonde: <message>` to stderr.
function M.err(fmt, ...)
  io.stderr:write("sonde: ", string.format(fmt, ...), "\n")
end

--- "1 probe", "2 probes".
function M.plural(n, word)
  return string.format("%d %s%s", n, word, n == 1 and "" or "s")
end

--- `os.exit` from a hook or a task ends the process at once: make it
-- take the services and running commands with it (SIGKILL to their
-- process groups) rather than leave them orphaned, and, as a subreaper,
-- what escaped those groups (setsid, a double fork): SIGKILL to every
-- descendant outside the host's own group, scanning for EXIT_SWEEP
-- seconds so that the children of the leaders just killed are caught
-- once they are re-parented to the host.  The Lua state is not closed
-- (that would free the loop under its own feet).
local EXIT_SWEEP = 0.1

function M.guard_exit()
  local real_exit = os.exit
  os.exit = function(code)
    core.kill_all(core.signals.KILL)
    core.end_orphans(0)
    local stop = core.now() + EXIT_SWEEP
    repeat core.reap_orphans() until core.now() >= stop
    io.stdout:flush()
    io.stderr:flush()
    return real_exit(code, false)
  end
end

--- The commands' error policy, set once for every callback of the loop:
-- an error escaping a task or callback is logged (`task_error`) and the
-- engine goes on.
function M.log_errors()
  core.on_error(function(err)
    log.event("error", "task_error", { error = task.text_of(err) })
  end)
end

--- A load error without the stack traceback (file:line stays in the
-- message); SONDE_TRACEBACK=1 keeps it.
function M.load_error(e)
  e = tostring(e)
  if os.getenv("SONDE_TRACEBACK") ~= "1" then
    e = e:gsub("\nstack traceback:.*$", "")
  end
  return e
end

--- lua.c's convention for a script: arg[0] the script, arg[1..] its
-- arguments (also passed as `...`).
function M.set_arg(script, args)
  _G.arg = table.move(args, 1, #args, 1, { [0] = script })
end

local MANIFEST_EXT = { yaml = true, yml = true, json = true }

--- True when `path` names a Kubernetes manifest rather than a Lua script:
-- its name ends in .yaml, .yml or .json, or it is not Lua and starts the
-- way manifests do (`apiVersion:`, `kind:`, `---`, `{`).
function M.is_manifest(path)
  local ext = path:match("%.(%w+)$")
  if ext and MANIFEST_EXT[ext:lower()] then return true end
  if loadfile(path) then return false end
  local f = io.open(path, "rb")
  if not f then return false end
  local head = (f:read(4096) or ""):gsub("^\239\187\191", "")   -- a BOM
  f:close()
  for line in head:gmatch("[^\n]+") do
    if not line:match("^%s*#") and line:match("%S") then
      return line:match("^%s*apiVersion%s*:") or line:match("^%s*kind%s*:")
        or line:match("^%-%-%-%s*$") or line:match("^%s*{") or false
    end
  end
  return false
end

--- What a load runs: `{ name = path, load = path or function }` for
-- config.load.  A manifest (`manifest` true, or a container named, or
-- `is_manifest`) declares its pod (sonde.pod): every init container and
-- sidecar, and every container (or only the one named), with their
-- probes.
function M.source(path, container, manifest)
  if manifest or container or M.is_manifest(path) then
    return { name = path, manifest = true, load = function()
      pod.load(path, { container = container })
    end }
  end
  return { name = path, load = path }
end

return M
