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
--     `SONDE_KIND`, `SONDE_STATUS`, `SONDE_REASON`, `SONDE_OUTPUT` (the
--     first 4096 bytes, NULs dropped), `SONDE_SERVICE` (when the probe has
--     one), and its stdin the result as a JSON document (as a webhook's
--     default body).  The argv is `$(VAR)`-expanded against `env` only:
--     `$(SONDE_OUTPUT)` stays literal, since what a target printed must
--     never become shell code.  Use `sh -c '... "$SONDE_OUTPUT" ...'`
--     (quoted) or read stdin (`jq -r .output`);
--   * `sonde.action.webhook{ url, method = "POST", headers, body, timeout,
--     tls }`: an HTTP request through libcurl; `body` is a string or a
--     `function(result, probe) -> string`, by default the result as JSON
--     (with `Content-Type: application/json`).  Unlike probes, a webhook
--     verifies TLS (`tls.verify` defaults to true; `tls = { verify =
--     false }` opts out) and follows a redirect only to the same scheme, host
--     and port (`follow_redirects = "same-origin"` of the http prober): a
--     3xx to anywhere else is its answer, a failed action.  Events name it without userinfo, query string or fragment;
--   * any Lua function `function(result, probe)` (run like a hook: bounded,
--     errors contained).
--
-- Rate limit: an action of a probe runs at most once per the probe's
-- `action_interval` seconds (default 30); a transition inside that window
-- is logged as `action` with status `suppressed`.  An action that fails is
-- logged (`action` status `failed`); nothing else stops.
--
-- The commands and requests an action starts belong to its probe (see
-- sonde.task scopes): stopping the probe, or the host, cancels them; what
-- a function action starts belongs to the probe's load.
-- @module sonde.action
local log = require "sonde.log"
local hook = require "sonde.hook"
local validate = require "sonde.validate"
local probers = require "sonde.probers"
local json = require "sonde.json"
local task = require "sonde.task"
local redact = require "sonde.redact"

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
  if type(service) ~= "table" or type(service.restart) ~= "function" then
    validate.raise("sonde.action.restart: a sonde.service expected")
  end
  return new("restart", function(self, result, probe)
    report(probe, self, "started")
    service:restart("action")
    report(probe, self, "done")
  end, "restart " .. service.name)
end

-- The result as environment variables of an exec action.  Values a target
-- chose (output, reason) reach the command only this way (`env_data`: never
-- in the `$(VAR)` expansion of its argv) and on its stdin.
local function result_env(result, probe)
  local out = tostring(result.output or "")
  if #out > 4096 then out = out:sub(1, 4096) end
  local env = {
    SONDE_PROBE = probe.name, SONDE_KIND = probe.kind,
    SONDE_STATUS = result.status, SONDE_REASON = result.reason,
    SONDE_OUTPUT = out,
    SONDE_SERVICE = probe.service and probe.service.name or nil,
  }
  for k, v in pairs(env) do env[k] = (tostring(v):gsub("%z", "")) end
  return env
end

-- The result as a JSON document (a webhook's default body, an exec
-- action's stdin); at most probers.MAX_INPUT bytes: a bigger one goes
-- without `body` and with `output` cut to 4096 bytes (`truncated` true).
local function result_doc(result)
  local copy = {}
  for k, v in pairs(result) do copy[k] = v end
  local doc = json.encode(copy)
  if #doc > probers.MAX_INPUT then
    copy.body = nil
    if type(copy.output) == "string" then copy.output = copy.output:sub(1, 4096) end
    copy.truncated = true
    doc = json.encode(copy)
  end
  return doc
end

-- Start an operation of handler `h` for action `a` of `probe`, in the
-- current scope (the probe's), and report how it ended; `clean(text)`
-- takes secrets out of a failure's message.
local function start(h, opts, a, probe, ok_detail, clean)
  report(probe, a, "started")
  task.start("action", function(k) return h.start(opts, k) end, function(r)
    if r.status == "success" then
      report(probe, a, "done", ok_detail(r))
    else
      local detail = string.format("%s %s: %s", r.status, r.reason, r.output)
      report(probe, a, "failed", clean and clean(detail) or detail)
    end
  end)
end

--- Run a command (see the module doc).  Its argv is `$(VAR)`-expanded
-- against the spec's own `env` only: the result's values are in its
-- environment (`env_data` of the exec prober) and, as a JSON document, on
-- its stdin, never in its argv.
-- @raise naming the field, on a bad spec
function M.exec(spec)
  local h = probers.handlers.exec
  local ctx = { where = "sonde.action.exec" }
  validate.checks.table(ctx, spec, "spec")
  local base = {}
  for k, v in pairs(spec) do base[k] = v end
  h.prepare(ctx, base)                             -- validate now
  return new("exec", function(self, result, probe)
    local s = {}
    for k, v in pairs(base) do s[k] = v end
    local data = {}
    for k, v in pairs(spec.env_data or {}) do data[k] = v end
    for k, v in pairs(result_env(result, probe)) do data[k] = v end
    s.env_data = data
    s.input = result_doc(result)
    start(h, h.prepare(ctx, s), self, probe, function(r) return r.output end)
  end, "exec " .. table.concat(spec.command, " "))
end

local WEBHOOK = validate.schema {
  { "url", "string", required = true },
  { "method", "string", default = "POST" },
  { "headers", "table" },
  { "body", function(ctx, v, field)
      if type(v) ~= "string" and type(v) ~= "function" then
        validate.fail(ctx, field, "must be a string or a function, got %s",
          type(v))
      end
      return v
    end },
  { "timeout", "seconds", default = 5 },
  { "tls", "table" },
}

--- Call a webhook (see the module doc).
-- @raise naming the field, on a bad spec
function M.webhook(spec)
  local h = probers.handlers.http_get
  local ctx = { where = "sonde.action.webhook" }
  local w = WEBHOOK:apply(ctx, spec)
  local body = w.body
  -- not a probe: TLS is verified unless the spec says otherwise
  local tls = { verify = true }
  for k, v in pairs(w.tls or {}) do tls[k] = v end
  -- and follows a redirect only to the same scheme, host and port: a 3xx
  -- to elsewhere is its answer (a warning, so a failed action)
  local base = { url = w.url, method = w.method, headers = w.headers,
                 timeout = w.timeout, tls = tls,
                 follow_redirects = "same-origin" }
  h.prepare(ctx, base)                             -- validate now
  -- events name it without userinfo, query string or fragment
  local name = redact.endpoint(w.url)
  local masked = redact.url(w.url)
  local function clean(text)
    return redact.replace(redact.replace(text, w.url, name), masked, name)
  end
  return new("webhook", function(self, result, probe)
    local text
    if type(body) == "function" then
      local ok, v = task.within(probe.owner.scope, hook.call, body, nil,
        hook.plain(result), probe)
      if not ok or type(v) ~= "string" then
        report(probe, self, "failed", "body function: " ..
          (ok and "did not return a string" or tostring(v)))
        return
      end
      text = v
    elseif type(body) == "string" then
      text = body
    else
      text = result_doc(result)
    end
    local s = {}
    for k, v in pairs(base) do s[k] = v end
    s.body = text
    if body == nil and s.headers == nil then
      s.headers = { ["Content-Type"] = "application/json" }
    end
    start(h, h.prepare(ctx, s), self, probe,
      function(r) return tostring(r.http_status) end, clean)
  end, "webhook " .. name)
end

--- Wrap a Lua function as an action (it runs like a hook, in the probe's
-- load).
function M.fn(f)
  return new("function", function(self, result, probe)
    local ok, err = task.within(probe.owner.scope, hook.call, f, nil,
      hook.plain(result), probe)
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
    validate.fail(ctx, field, "must be an action, a function or a list of "
      .. "them, got %s", type(v))
  end
  local out = {}
  for i, a in ipairs(v) do
    if type(a) == "function" then out[i] = M.fn(a)
    elseif M.is_action(a) then out[i] = a
    else
      validate.fail(ctx, string.format("%s[%d]", field, i), "must be an action "
        .. "or a function, got %s", type(a))
    end
  end
  return out
end

--- Run the actions of a transition, applying the rate limit.
-- @param list the actions
-- @param probe the probe (its `action_interval`, `last_action` table, made
-- here when first needed)
-- @tparam number now monotonic seconds
-- @tparam string which "on_failure" or "on_recovery": the rate limit is
-- kept per list and position, so it survives a reload that keeps the probe
function M.run_all(list, result, probe, now, which)
  for i, a in ipairs(list) do
    local key = which .. i
    local times = probe.last_action
    if not times then times = {} probe.last_action = times end
    local last = times[key]
    if last and now - last < probe.action_interval then
      report(probe, a, "suppressed", string.format(
        "ran %.1f s ago (action_interval %g s)", now - last,
        probe.action_interval), "info")
    else
      times[key] = now
      local ok, err = pcall(a.run, a, result, probe)
      if not ok then report(probe, a, "failed", tostring(err)) end
    end
  end
end

return M
