--- Kubernetes manifests: run one container of a Pod (or of a workload's pod
-- template) as a supervised service with its probes.
--
--   sonde pod MANIFEST.yaml [--container NAME]      (the host)
--   sonde.k8s.load(path [, { container = NAME }])   (from Lua)
--
-- The manifest is YAML or JSON (read with lua-yaml's lyaml); a file may
-- hold several documents: the first Pod, Deployment, StatefulSet,
-- DaemonSet, ReplicaSet, Job or ReplicationController is used.  The
-- container is the one named, or the first.  From it sonde takes:
--
--   * `command` + `args` as the service's argv (the image is not used: with
--     only `args`, they are the command, as for an image without an
--     entrypoint), `$(VAR)`-expanded against its env as the kubelet does;
--   * `env` (`name` + `value`, each value expanded against the entries
--     before it), `workingDir`, `ports` (`name` + `containerPort`, for
--     named probe ports);
--   * `livenessProbe`, `readinessProbe`, `startupProbe` (see sonde.k8s),
--     named `<container>-liveness` etc., with the container's static env
--     for exec probes;
--   * the pod's `restartPolicy` (Always, OnFailure, Never) and
--     `terminationGracePeriodSeconds` (default 30).
--
-- Not supported, and reported as errors rather than ignored: `env` entries
-- with `valueFrom`, `envFrom`, lifecycle hooks.  Fields that
-- only matter to a container runtime (image, resources, volumeMounts,
-- securityContext, ...) are listed in a `pod_ignored` log event.
-- @module sonde.pod
local core = require "sonde.core"
local validate = require "sonde.validate"
local log = require "sonde.log"
local k8s = require "sonde.k8s"
local config = require "sonde.config"

local M = {}

local WORKLOADS = { Deployment = true, StatefulSet = true, DaemonSet = true,
                    ReplicaSet = true, Job = true, ReplicationController = true }
local USED = { name = true, command = true, args = true, env = true,
               workingDir = true, ports = true, livenessProbe = true,
               readinessProbe = true, startupProbe = true }
local POLICY = { Always = "always", OnFailure = "on-failure", Never = "never" }

-- An error about the manifest, at the line of the script that loads it
-- (sonde.k8s.load), or without a position (sonde pod, check, once).
local function fail(path, fmt, ...)
  validate.raise(string.format("%s: " .. fmt, path, ...))
end

local MAX_MANIFEST = 8 * 1024 * 1024   -- bytes

local function read_docs(path)
  local f, err = io.open(path, "rb")
  if not f then validate.raise(err) end   -- "PATH: No such file..."
  -- not /dev/zero or a pipe that never ends: read at most MAX_MANIFEST
  local text = f:read(MAX_MANIFEST + 1)
  f:close()
  if not text then fail(path, "empty or unreadable") end
  if #text > MAX_MANIFEST then
    fail(path, "larger than %d bytes", MAX_MANIFEST)
  end
  local ok, lyaml = pcall(require, "lyaml")
  if not ok then
    fail(path, "reading manifests needs lua-yaml (Debian: apt-get install "
      .. "lua-yaml)")
  end
  local okp, docs = pcall(lyaml.load, text, { all = true })
  if not okp then fail(path, "not valid YAML or JSON: %s", tostring(docs)) end
  return docs
end

--- Find the pod spec in a manifest file.
-- @return the pod spec table, the object's kind and name
function M.pod_spec(path)
  for _, doc in ipairs(read_docs(path)) do
    if type(doc) == "table" then
      if doc.kind == "Pod" and type(doc.spec) == "table" then
        return doc.spec, doc.kind, doc.metadata and doc.metadata.name
      elseif WORKLOADS[doc.kind] and type(doc.spec) == "table" and
          type(doc.spec.template) == "table" and
          type(doc.spec.template.spec) == "table" then
        return doc.spec.template.spec, doc.kind, doc.metadata and doc.metadata.name
      end
    end
  end
  fail(path, "no Pod or pod template (Deployment, StatefulSet, DaemonSet, "
    .. "ReplicaSet, Job) found")
end

--- Declare the service and probes of one container of a manifest.
-- @tparam string path manifest file
-- @tparam[opt] table opts `{ container = NAME }`
-- @return the service, and the list of probes
-- @raise with the manifest path and the field, on anything unsupported
function M.load(path, opts)
  opts = opts or {}
  local cfg = config.ambient()
  local spec, _, objname = M.pod_spec(path)
  local containers = spec.containers
  if type(containers) ~= "table" or #containers == 0 then
    fail(path, "spec.containers: no containers")
  end
  local c, idx
  for i, x in ipairs(containers) do
    if opts.container == nil or x.name == opts.container then
      c, idx = x, i
      break
    end
  end
  if not c then
    local names = {}
    for i, x in ipairs(containers) do names[i] = tostring(x.name) end
    fail(path, "no container named %q (containers: %s)", opts.container,
      table.concat(names, ", "))
  end
  local where = string.format("%s: containers[%d] (%s)", path, idx - 1,
    tostring(c.name))
  if type(c.name) ~= "string" then fail(where, "name: required") end
  if c.envFrom ~= nil then fail(where, "envFrom: not supported") end
  if c.lifecycle ~= nil then fail(where, "lifecycle: not supported") end
  local ignored = {}
  for k in pairs(c) do
    if not USED[k] and k ~= "envFrom" then ignored[#ignored + 1] = k end
  end
  table.sort(ignored)
  if #ignored > 0 then
    log.event("info", "pod_ignored", { pod = objname, container = c.name,
      fields = table.concat(ignored, ",") })
  end
  -- env: static values, each expanded against the ones before it
  local env, order = {}, {}
  for i, e in ipairs(c.env or {}) do
    local f = string.format("env[%d]", i - 1)
    if type(e) ~= "table" or type(e.name) ~= "string" then
      fail(where, "%s.name: required", f)
    end
    if e.valueFrom ~= nil then
      fail(where, "%s (%s).valueFrom: not supported (only literal values)",
        f, e.name)
    end
    local v = e.value == nil and "" or tostring(e.value)
    env[e.name] = core.expand(v, env)
    order[#order + 1] = e.name
  end
  local argv = {}
  for _, a in ipairs(c.command or {}) do argv[#argv + 1] = tostring(a) end
  for _, a in ipairs(c.args or {}) do argv[#argv + 1] = tostring(a) end
  if #argv == 0 then
    fail(where, "command/args: none given (sonde does not use the image's "
      .. "entrypoint)")
  end
  -- (argv is `$(VAR)`-expanded against env by the service, like any
  -- exec command: once)
  local ports = {}
  for i, p in ipairs(c.ports or {}) do
    if type(p) ~= "table" or math.type(p.containerPort) ~= "integer" then
      fail(where, "ports[%d].containerPort: integer required", i - 1)
    end
    if p.name then ports[#ports + 1] = { name = p.name, port = p.containerPort } end
  end
  local grace = spec.terminationGracePeriodSeconds
  local policy = POLICY[spec.restartPolicy or "Always"]
  if not policy then
    fail(path, "spec.restartPolicy: must be Always, OnFailure or Never, got %s",
      tostring(spec.restartPolicy))
  end
  local svc = cfg:service {
    name = c.name,
    command = argv,
    env = env,
    cwd = c.workingDir,
    grace = grace,
    restart = { policy = policy },
  }
  local probes = {}
  for _, pk in ipairs { { "startupProbe", "startup" },
                        { "readinessProbe", "readiness" },
                        { "livenessProbe", "liveness" } } do
    local pr = c[pk[1]]
    if pr ~= nil then
      if type(pr) ~= "table" then fail(where, "%s: must be a mapping", pk[1]) end
      local t = {}
      for k, v in pairs(pr) do t[k] = v end
      t.name = c.name .. "-" .. pk[2]
      t.kind = pk[2]
      t.service = svc
      t.ports = #ports > 0 and ports or nil
      if pr.exec and next(env) then t.env = env end
      local ok, p = pcall(function()
        return cfg:probe(k8s.probe(t))
      end)
      if not ok then
        -- the message without the position inside sonde's own files
        fail(where, "%s: %s", pk[1], (tostring(p):gsub("^[^\n]-%.lua:%d+: ", "")))
      end
      probes[#probes + 1] = p
    end
  end
  return svc, probes
end

return M
