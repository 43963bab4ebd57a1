--- Kubernetes adapter: probe specs with the pod-spec field names.
--
--   sonde.probe(sonde.k8s.probe {
--     name = "web-live", kind = "liveness", service = web,  -- sonde's own
--     httpGet = { path = "/healthz", port = 8080,
--                 httpHeaders = { { name = "X-Probe", value = "1" } } },
--     initialDelaySeconds = 3, periodSeconds = 5,
--   })
--
-- Fields: one handler of `exec = { command = {...} }`, `httpGet = { path,
-- port, host, scheme, httpHeaders }`, `tcpSocket = { port, host }`,
-- `grpc = { port, service }` (port a number: no named port, as the
-- kubelet; the host is sonde's default, 127.0.0.1, where the kubelet
-- dials the pod IP); `initialDelaySeconds`,
-- `periodSeconds`, `timeoutSeconds`, `successThreshold`,
-- `failureThreshold`, `terminationGracePeriodSeconds`, with the Kubernetes
-- defaults (0 or absent: period 10, timeout 1, success 1, failure 3;
-- httpGet path "/", scheme HTTP).  sonde's own fields (`name`, `kind`,
-- `service`, `env`, `ports`, hooks, actions) pass through unchanged.
-- `terminationGracePeriodSeconds` becomes the grace of the restart this
-- probe triggers.
-- @module sonde.k8s
local validate = require "sonde.validate"

local M = {}

local K8S = {
  exec = true, httpGet = true, tcpSocket = true, grpc = true,
  initialDelaySeconds = true, periodSeconds = true, timeoutSeconds = true,
  successThreshold = true, failureThreshold = true,
  terminationGracePeriodSeconds = true,
}
local PASS = { name = true, kind = true, service = true, env = true,
               ports = true, on_result = true, on_change = true,
               on_failure = true, on_recovery = true,
               action_interval = true }

-- The handlers' fields; their values are checked by sonde.probe.
local function any(_, v) return v end
local EXEC = validate.schema { { "command", any } }
local HTTP_GET = validate.schema { { "path", any }, { "port", any },
  { "host", any }, { "scheme", any }, { "httpHeaders", any } }
local TCP_SOCKET = validate.schema { { "port", any }, { "host", any } }
local GRPC = validate.schema { { "port", any }, { "service", any } }

-- Kubernetes: 0 means "use the default".
local function int(ctx, v, field, default, min)
  if v == nil then return default end
  if math.type(v) ~= "integer" then
    validate.fail(ctx, field, "must be an integer, got %s", validate.show(v))
  end
  if v < min then validate.fail(ctx, field, "must be >= %d, got %d", min, v) end
  if v == 0 then return default end
  return v
end

--- Translate a Kubernetes probe table to a sonde.probe spec.
-- @raise naming the Kubernetes field
function M.probe(t)
  local ctx = { where = "sonde.k8s.probe" }
  validate.checks.table(ctx, t, "probe")
  if type(t.name) == "string" then
    ctx.where = string.format("probe %q", t.name)
  end
  for k in pairs(t) do
    if not K8S[k] and not PASS[k] then
      validate.fail(ctx, nil, "unknown field %s", validate.show(k))
    end
  end
  local spec = {}
  for k in pairs(PASS) do spec[k] = t[k] end
  local n = 0
  for _, h in ipairs { "exec", "httpGet", "tcpSocket", "grpc" } do
    if t[h] ~= nil then n = n + 1 end
  end
  if n == 0 then validate.fail(ctx, nil, "must specify a handler type") end
  if n > 1 then validate.fail(ctx, nil, "may not specify more than 1 handler type") end
  if t.exec ~= nil then
    EXEC:apply(ctx, t.exec, "exec")
    spec.exec = { command = t.exec.command }
  elseif t.httpGet ~= nil then
    local h = t.httpGet
    HTTP_GET:apply(ctx, h, "httpGet")
    local headers
    if h.httpHeaders ~= nil then
      validate.checks.array(ctx, h.httpHeaders, "httpGet.httpHeaders")
      headers = {}
      for i, e in ipairs(h.httpHeaders) do
        validate.checks.table(ctx, e, string.format("httpGet.httpHeaders[%d]", i))
        headers[i] = { name = e.name, value = e.value }
      end
    end
    local path = h.path
    if path == nil or path == "" then path = "/" end
    spec.http_get = { path = path, port = h.port, host = h.host,
                      scheme = h.scheme or "HTTP", headers = headers }
  elseif t.tcpSocket ~= nil then
    local h = t.tcpSocket
    TCP_SOCKET:apply(ctx, h, "tcpSocket")
    spec.tcp_socket = { port = h.port, host = h.host }
  else
    local h = t.grpc
    GRPC:apply(ctx, h, "grpc")
    -- kubelet: port is required (an int32); service defaults to ""
    spec.grpc = { port = h.port, service = h.service }
  end
  spec.initial_delay = int(ctx, t.initialDelaySeconds, "initialDelaySeconds",
    0, 0)
  spec.period = int(ctx, t.periodSeconds, "periodSeconds", 10, 0)
  spec.timeout = int(ctx, t.timeoutSeconds, "timeoutSeconds", 1, 0)
  spec.success_threshold = int(ctx, t.successThreshold, "successThreshold",
    1, 0)
  spec.failure_threshold = int(ctx, t.failureThreshold, "failureThreshold",
    3, 0)
  if t.terminationGracePeriodSeconds ~= nil then
    local g = t.terminationGracePeriodSeconds
    if math.type(g) ~= "integer" or g <= 0 then
      validate.fail(ctx, "terminationGracePeriodSeconds", "must be greater than "
        .. "0, got %s", validate.show(g))
    end
    if t.kind == "readiness" then
      validate.fail(ctx, "terminationGracePeriodSeconds", "must not be set for "
        .. "readiness probes")
    end
    spec.termination_grace = g
  end
  return spec
end

return M
