--- Remediation actions, run by probes on transitions: `on_failure` when
-- the probe publishes failure (its failure_threshold is reached; the
-- readiness seed does not count), `on_recovery` when it publishes success
-- after that (for a liveness probe: the first success of the restarted
-- service).  Not on every failed run.
--
--   * `sonde.action.restart(service)`: restart a supervised service (its
--     back-off applies);
--   * `sonde.action.exec{ command, env, timeout, cwd }`: run a command with
--     the exec prober's machinery; its environment also gets `SONDE_PROBE`,
--     `SONDE_KIND`, `SONDE_STATUS`, `SONDE_REASON`, `SONDE_OUTPUT`,
--     `SONDE_SERVICE` (when the probe has one);
--   * `sonde.action.webhook{ url, method = "POST", headers, body, timeout }`:
--     an HTTP request through libcurl; `body` is a string or a
--     `function(result, probe) -> string`, by default the result as JSON
--     (with `Content-Type: application/json`);
--   * any Lua function `function(result, probe)` (run like a hook: bounded,
--     errors contained).
--
-- Rate limit: an action of a probe runs at most once per the probe's
-- `action_interval` seconds (default 30); a transition inside that window
-- is logged as `action` with status `suppressed`.  An action that fails is
-- logged (`action` status `failed`); nothing else stops.
-- @module sonde.action
local log = require "sonde.log"
local hook = require "sonde.hook"
local check = require "sonde.check"

local M = {}
local Action = {}
Action.__index = Action

local function new(kind, run, describe)
  return setmetatable({ kind = kind, run = run, describe = describe }, Action)
end

function M.is_action(v)
  return getmetatable(v) == Action
end

local function report(probe, action, status, detail, level)
  log.event(level or (status == "failed" and "warn" or "info"), "action", {
    probe = probe.name, action = action.describe, status = status,
    detail = detail,
  })
end

--- Restart a supervised service.
-- @param service a `sonde.service` object
function M.restart(service)
  if type(service) ~= "table" or not service.restart then
    error("sonde.action.restart: a sonde.service expected", 2)
  end
  return new("restart", function(self, result, probe)
    report(probe, self, "started")
    service:restart("action")
    report(probe, self, "done")
  end, "restart " .. service.name)
end

local function result_env(result, probe)
  local out = result.output or ""
  if #out > 4096 then out = out:sub(1, 4096) end
  return {
    SONDE_PROBE = probe.name, SONDE_KIND = probe.kind,
    SONDE_STATUS = result.status, SONDE_REASON = result.reason,
    SONDE_OUTPUT = (out:gsub("%z", "")),
    SONDE_SERVICE = probe.service and probe.service.name or nil,
  }
end

--- Run a command (see the module doc).
function M.exec(spec)
  local sonde = require "sonde"
  local ctx = { where = "sonde.action.exec" }
  check.table(ctx, spec, "spec")
  local base = {}
  for k, v in pairs(spec) do base[k] = v end
  sonde._handlers.exec.prepare(ctx, base)          -- validate now
  return new("exec", function(self, result, probe)
    local s = {}
    for k, v in pairs(base) do s[k] = v end
    local env = {}
    for k, v in pairs(spec.env or {}) do env[k] = v end
    for k, v in pairs(result_env(result, probe)) do env[k] = v end
    s.env = env
    local opts = sonde._handlers.exec.prepare(ctx, s)
    report(probe, self, "started")
    sonde._handlers.exec.start(opts, function(r)
      if r.status == "success" then
        report(probe, self, "done", r.output)
      else
        report(probe, self, "failed", string.format("%s %s: %s", r.status,
          r.reason, r.output))
      end
    end)
  end, "exec " .. table.concat(spec.command, " "))
end

--- Call a webhook (see the module doc).
function M.webhook(spec)
  local sonde = require "sonde"
  local ctx = { where = "sonde.action.webhook" }
  check.table(ctx, spec, "spec")
  check.known_keys(ctx, spec, { url = true, method = true, headers = true,
    body = true, timeout = true, tls = true })
  if spec.url == nil then check.fail(ctx, "url", "is required") end
  local body = spec.body
  if body ~= nil and type(body) ~= "string" and type(body) ~= "function" then
    check.fail(ctx, "body", "must be a string or a function, got %s",
      type(body))
  end
  local base = { url = spec.url, method = spec.method or "POST",
                 headers = spec.headers, timeout = spec.timeout or 5,
                 tls = spec.tls }
  sonde._handlers.http_get.prepare(ctx, base)      -- validate now
  return new("webhook", function(self, result, probe)
    local text
    if type(body) == "function" then
      local ok, v = hook.call(body, nil, result, probe)
      if not ok or type(v) ~= "string" then
        report(probe, self, "failed", "body function: " ..
          (ok and "did not return a string" or tostring(v)))
        return
      end
      text = v
    elseif type(body) == "string" then
      text = body
    else
      local copy = {}
      for k, v in pairs(result) do copy[k] = v end
      text = log.json(copy)
    end
    local s = {}
    for k, v in pairs(base) do s[k] = v end
    s.body = text
    if body == nil and s.headers == nil then
      s.headers = { ["Content-Type"] = "application/json" }
    end
    local opts = sonde._handlers.http_get.prepare(ctx, s)
    report(probe, self, "started")
    sonde._handlers.http_get.start(opts, function(r)
      if r.status == "success" then
        report(probe, self, "done", tostring(r.http_status))
      else
        report(probe, self, "failed", string.format("%s %s: %s", r.status,
          r.reason, r.output))
      end
    end)
  end, "webhook " .. spec.url)
end

--- Wrap a Lua function as an action.
function M.fn(f)
  return new("function", function(self, result, probe)
    local ok, err = hook.call(f, nil, result, probe)
    if ok then report(probe, self, "done")
    else report(probe, self, "failed", err) end
  end, "function")
end

--- Normalise an `on_failure` / `on_recovery` value to a list of actions.
-- @raise when it is not an action, a function or a list of those
function M.list(ctx, v, field)
  if v == nil then return {} end
  if type(v) == "function" then return { M.fn(v) } end
  if M.is_action(v) then return { v } end
  if type(v) ~= "table" then
    check.fail(ctx, field, "must be an action, a function or a list of "
      .. "them, got %s", type(v))
  end
  local out = {}
  for i, a in ipairs(v) do
    if type(a) == "function" then out[i] = M.fn(a)
    elseif M.is_action(a) then out[i] = a
    else
      check.fail(ctx, string.format("%s[%d]", field, i), "must be an action "
        .. "or a function, got %s", type(a))
    end
  end
  return out
end

--- Run the actions of a transition, applying the rate limit.
-- @param probe the probe (its `action_interval`, `last_action` table)
function M.run_all(list, result, probe, now)
  for _, a in ipairs(list) do
    local last = probe.last_action[a]
    if last and now - last < probe.action_interval then
      report(probe, a, "suppressed", string.format(
        "ran %.1f s ago (action_interval %g s)", now - last,
        probe.action_interval), "info")
    else
      probe.last_action[a] = now
      local ok, err = pcall(a.run, a, result, probe)
      if not ok then report(probe, a, "failed", tostring(err)) end
    end
  end
end

return M
