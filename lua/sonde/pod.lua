--- Kubernetes manifests: run a Pod (or a workload's pod template) as
-- the kubelet runs it: its init containers, sidecars and containers as
-- supervised services with their probes, in the kubelet's order
-- (sonde.podrun).
--
--   sonde pod MANIFEST.yaml [--container NAME]      (the host)
--   sonde.k8s.load(path [, { container = NAME }])   (from Lua)
--
-- The manifest is YAML or JSON (read with lua-yaml's lyaml); a file may
-- hold several documents: the first Pod, Deployment, StatefulSet,
-- DaemonSet, ReplicaSet, Job or ReplicationController is used.  Every
-- container of `containers` runs, or only the one named (`--container`:
-- it must be one of `containers`), and in both cases every init
-- container and sidecar (`initContainers`) before them.  From each
-- container sonde takes:
--
--   * `command` + `args` as the service's argv (the image is not used: with
--     only `args`, they are the command, as for an image without an
--     entrypoint), `$(VAR)`-expanded against its env as the kubelet does;
--   * `env` (`name` + `value`, each value expanded against the entries
--     before it), `workingDir`, `ports` (`name` + `containerPort`, for
--     named probe ports);
--   * `livenessProbe`, `readinessProbe`, `startupProbe` (see sonde.k8s),
--     named `<container>-liveness` etc., with the container's static env
--     for exec probes (init containers may have none, as in Kubernetes;
--     sidecars may);
--   * for an init container, `restartPolicy: Always`: a sidecar;
--
-- and from the pod its `restartPolicy` (Always, OnFailure, Never) and
-- `terminationGracePeriodSeconds` (default 30).
--
-- Errors (the manifest does not load): what Kubernetes itself rejects
-- and sonde checks (no containers, a container without a name or with
-- a name used twice, no command or args, probes on an init container
-- that is not a sidecar, an init container's restartPolicy other than
-- Always, a bad probe).
--
-- What sonde cannot do is reported once per load, as a warning
-- (`pod_unsupported`: pod, container, field, detail), and the rest runs:
-- `env[i].valueFrom` (the variable is not set), `envFrom` (not read),
-- `volumeMounts` and `volumeDevices` (nothing is mounted: the command
-- sees the host's files), `lifecycle` hooks (postStart and preStop are
-- not run), `stdin` and `tty` (stdin is /dev/null), an app container's
-- `restartPolicy` and `restartPolicyRules` (the pod's restartPolicy
-- applies); and of the pod: `volumes` (nothing is mounted),
-- `readinessGates` (/readyz does not wait for them),
-- `activeDeadlineSeconds` (not enforced), `hostAliases` (not added to
-- /etc/hosts), `ephemeralContainers` (not run).  Fields that only matter
-- to a container runtime or a scheduler (image, resources,
-- securityContext, nodeSelector, tolerations, ...) are listed in one
-- `pod_ignored` event (info) per container and one for the pod.
-- @module sonde.pod
local core = require "sonde.core"
local validate = require "sonde.validate"
local log = require "sonde.log"
local k8s = require "sonde.k8s"
local config = require "sonde.config"
local podrun = require "sonde.podrun"

local M = {}

local WORKLOADS = { Deployment = true, StatefulSet = true, DaemonSet = true,
                    ReplicaSet = true, Job = true, ReplicationController = true }
local POLICY = { Always = "always", OnFailure = "on-failure", Never = "never" }

-- A container's fields sonde uses (`restartPolicy`: an init container's).
local USED = { name = true, command = true, args = true, env = true,
               workingDir = true, ports = true, livenessProbe = true,
               readinessProbe = true, startupProbe = true }
-- A container's fields sonde cannot honour: warned (see `unsupported`).
local UNSUPPORTED = {
  envFrom = "not read: its variables are not set",
  volumeMounts = "nothing is mounted: the command sees the host's files",
  volumeDevices = "no device is attached",
  restartPolicy = "the pod's restartPolicy applies to app containers",
  restartPolicyRules = "the pod's restartPolicy applies",
  stdin = "stdin is /dev/null",
  stdinOnce = "stdin is /dev/null",
  tty = "no terminal is allocated",
}
-- The pod's fields sonde uses, and those it cannot honour.
local POD_USED = { containers = true, initContainers = true,
                   restartPolicy = true, terminationGracePeriodSeconds = true }
local POD_UNSUPPORTED = {
  volumes = "nothing is mounted: the containers see the host's files",
  readinessGates = "/readyz does not wait for them",
  activeDeadlineSeconds = "not enforced",
  hostAliases = "not added to /etc/hosts",
  ephemeralContainers = "not run",
}

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
    .. "ReplicaSet, Job, ReplicationController) found")
end

-- The keys of a mapping, for a message ("secretKeyRef").
local function brief(v)
  if type(v) ~= "table" then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  return table.concat(keys, ",")
end

-- A field sonde cannot honour: a warning naming the pod, the container
-- and the field.
local function unsupported(podname, container, field, detail)
  log.event("warn", "pod_unsupported", { pod = podname, container = container,
    field = field, detail = detail })
end

-- The env of a container: static values, each expanded against the ones
-- before it; `valueFrom` entries are warned and left out.
local function container_env(where, c, podname)
  local env = {}
  if c.env ~= nil and type(c.env) ~= "table" then
    fail(where, "env: must be a list")
  end
  for i, e in ipairs(c.env or {}) do
    local f = string.format("env[%d]", i - 1)
    if type(e) ~= "table" or type(e.name) ~= "string" then
      fail(where, "%s.name: required", f)
    end
    if e.valueFrom ~= nil then
      unsupported(podname, c.name, f .. ".valueFrom", string.format(
        "%s is not set (valueFrom %s: sonde takes only literal values)",
        e.name, brief(e.valueFrom)))
    else
      local v = e.value == nil and "" or tostring(e.value)
      env[e.name] = core.expand(v, env)
    end
  end
  return env
end

-- Warn about what a container asks for that sonde cannot do, and list
-- (info) what only a container runtime uses.
local function report_fields(c, kind, podname)
  local ignored = {}
  local keys = {}
  for k in pairs(c) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = c[k]
    if k == "restartPolicy" and kind ~= "app" then   -- a sidecar's: used
    elseif k == "lifecycle" then
      local names = {}
      for h in pairs(type(v) == "table" and v or {}) do
        names[#names + 1] = tostring(h)
      end
      table.sort(names)
      for _, h in ipairs(names) do
        unsupported(podname, c.name, "lifecycle." .. h, h == "stopSignal"
          and "the stop signal is SIGTERM" or "the hook is not run")
      end
      if #names == 0 then
        unsupported(podname, c.name, "lifecycle", "hooks are not run")
      end
    elseif UNSUPPORTED[k] then
      local off = (k == "stdin" or k == "stdinOnce" or k == "tty") and not v
      if not off then
        local detail = UNSUPPORTED[k]
        if k == "volumeMounts" and type(v) == "table" then
          local paths = {}
          for _, m in ipairs(v) do
            if type(m) == "table" and m.mountPath then
              paths[#paths + 1] = tostring(m.mountPath)
            end
          end
          if #paths > 0 then
            detail = detail .. " (" .. table.concat(paths, ", ") .. ")"
          end
        end
        unsupported(podname, c.name, k, detail)
      end
    elseif not USED[k] then
      ignored[#ignored + 1] = k
    end
  end
  if #ignored > 0 then
    log.event("info", "pod_ignored", { pod = podname, container = c.name,
      fields = table.concat(ignored, ",") })
  end
end

-- The same for the pod's own fields.
local function report_pod_fields(spec, podname)
  local ignored, keys = {}, {}
  for k in pairs(spec) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  for _, k in ipairs(keys) do
    if POD_UNSUPPORTED[k] then
      unsupported(podname, nil, k, POD_UNSUPPORTED[k])
    elseif not POD_USED[k] then
      ignored[#ignored + 1] = k
    end
  end
  if #ignored > 0 then
    log.event("info", "pod_ignored", { pod = podname,
      fields = table.concat(ignored, ",") })
  end
end

-- Declare one container: its service and probes.  `kind` is init,
-- sidecar or app.
local function declare(cfg, path, where, c, kind, pod)
  local env = container_env(where, c, pod.name)
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
  -- the kubelet's restarts: an init container until it succeeds (unless
  -- the pod's policy is Never), a sidecar always, an app container by the
  -- pod's policy
  local policy = pod.policy
  if kind == "init" then
    policy = policy == "never" and "never" or "on-failure"
  elseif kind == "sidecar" then
    policy = "always"
  end
  local svc = cfg:service({
    name = c.name,
    command = argv,
    env = env,
    cwd = c.workingDir,
    grace = pod.grace,
    restart = { policy = policy },
  }, { pod = true })
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

--- Declare the pod of a manifest: a service per container (every init
-- container and sidecar, and every app container or the one named), with
-- its probes, run in the kubelet's order by a pod (sonde.podrun).
-- @tparam string path manifest file
-- @tparam[opt] table opts `{ container = NAME }`: of the app containers,
-- only this one
-- @return the (first) app container's service and its probes, and the pod
-- @raise with the manifest path and the field, on what does not load
function M.load(path, opts)
  opts = opts or {}
  local cfg = config.ambient()
  local spec, _, objname = M.pod_spec(path)
  local podname = objname ~= nil and tostring(objname)
    or (path:match("([^/]+)$"):gsub("%.[^.]*$", ""))
  local containers = spec.containers
  if type(containers) ~= "table" or #containers == 0 then
    fail(path, "spec.containers: no containers")
  end
  local inits = spec.initContainers or {}
  if type(inits) ~= "table" then fail(path, "spec.initContainers: must be a list") end
  local policy = POLICY[spec.restartPolicy or "Always"]
  if not policy then
    fail(path, "spec.restartPolicy: must be Always, OnFailure or Never, got %s",
      tostring(spec.restartPolicy))
  end
  local grace = spec.terminationGracePeriodSeconds
  if grace ~= nil and (math.type(grace) ~= "integer" or grace < 0) then
    fail(path, "spec.terminationGracePeriodSeconds: must be an integer >= 0, "
      .. "got %s", tostring(grace))
  end
  -- every container: where it is, its name, its kind
  local list, seen = {}, {}
  local function add(c, field, i, kind)
    local where = string.format("%s: %s[%d] (%s)", path, field, i - 1,
      type(c) == "table" and tostring(c.name) or "?")
    if type(c) ~= "table" then fail(where, "must be a mapping") end
    if type(c.name) ~= "string" or c.name == "" then fail(where, "name: required") end
    if seen[c.name] then
      fail(where, "name: %q is the name of %s too", c.name, seen[c.name])
    end
    seen[c.name] = string.format("%s[%d]", field, i - 1)
    if kind ~= "app" then
      if c.restartPolicy == "Always" then
        kind = "sidecar"
      elseif c.restartPolicy ~= nil then
        fail(where, "restartPolicy: must be Always (a sidecar) or unset, got %s",
          tostring(c.restartPolicy))
      else
        for _, pk in ipairs { "livenessProbe", "readinessProbe", "startupProbe" } do
          if c[pk] ~= nil then
            fail(where, "%s: may not be set for init containers without "
              .. "restartPolicy=Always", pk)
          end
        end
      end
    end
    list[#list + 1] = { c = c, where = where, kind = kind }
  end
  for i, c in ipairs(inits) do add(c, "initContainers", i, "init") end
  local first_app = #list + 1
  for i, c in ipairs(containers) do add(c, "containers", i, "app") end
  if opts.container ~= nil then
    local chosen
    for i = first_app, #list do
      if list[i].c.name == opts.container then chosen = list[i] end
    end
    if not chosen then
      local names = {}
      for i = first_app, #list do names[#names + 1] = list[i].c.name end
      local other = ""
      for i = 1, first_app - 1 do
        if list[i].c.name == opts.container then
          other = string.format("; %s is an init container%s: init "
            .. "containers and sidecars run with every container",
            opts.container, list[i].kind == "sidecar" and ", a sidecar" or "")
        end
      end
      fail(path, "no container named %q (containers: %s)%s", opts.container,
        table.concat(names, ", "), other)
    end
    for i = #list, first_app, -1 do
      if list[i] ~= chosen then table.remove(list, i) end
    end
  end
  report_pod_fields(spec, podname)
  local pod = { name = podname, policy = policy, grace = grace or 30,
    restart_policy = spec.restartPolicy or "Always" }
  for _, x in ipairs(list) do report_fields(x.c, x.kind, podname) end
  local decl, first = {}, nil
  for i, x in ipairs(list) do
    local svc, probes = declare(cfg, path, x.where, x.c, x.kind, pod)
    decl[i] = { name = x.c.name, kind = x.kind, service = svc }
    if x.kind == "app" and not first then first = { svc, probes } end
  end
  pod.containers = decl
  pod.fingerprint = config.fingerprint { path = path, spec = spec,
    container = opts.container }
  local p = cfg:pod(podrun.new(pod))
  return first[1], first[2], p
end

return M
