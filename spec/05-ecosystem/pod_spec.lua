-- `sonde pod MANIFEST`: a Kubernetes manifest run by the host, as a
-- subprocess (`$SONDE_BUILD/bin/sonde --log-format json pod ...`), its
-- event lines read back from a temporary stderr file.  The contract is
-- lua/sonde/pod.lua, lua/sonde/k8s.lua and README "Kubernetes manifests".
local helpers = require "helpers"
local fixture = require "fixture"

local q = helpers.shell_quote
local read_file = helpers.read_file

local BIN = (os.getenv("SONDE_BUILD") or "build") .. "/bin/sonde"
local EXAMPLE = "examples/liveness-exec.yaml"

---------------------------------------------------------------------------
-- JSON lines
---------------------------------------------------------------------------

local ok_cjson, cjson = pcall(require, "cjson")
local dkjson = (not ok_cjson) and require "dkjson" or nil

local function json_decode(s)
  if ok_cjson then
    local ok, v = pcall(cjson.decode, s)
    if ok then return v end
    return nil
  end
  local v, _, err = dkjson.decode(s, 1, nil)
  if err then return nil end
  return v
end

-- Complete lines (ending in "\n") decoded; others are skipped.
local function decode_lines(text)
  local evs = {}
  for line in (text or ""):gmatch("([^\n]*)\n") do
    local v = line ~= "" and json_decode(line)
    if type(v) == "table" then evs[#evs + 1] = v end
  end
  return evs
end

local function matches(e, name, where)
  if name and e.event ~= name then return false end
  for k, v in pairs(where or {}) do
    if e[k] ~= v then return false end
  end
  return true
end

local function select(evs, name, where, from)
  local out = {}
  for i = from or 1, #evs do
    if matches(evs[i], name, where) then out[#out + 1] = evs[i] end
  end
  return out
end

local function index_of(evs, name, where, from)
  for i = from or 1, #evs do
    if matches(evs[i], name, where) then return i end
  end
end

local function sleep(s) os.execute(string.format("sleep %.3f", s)) end

---------------------------------------------------------------------------
-- The host as a subprocess
---------------------------------------------------------------------------

-- Variables of the systemd protocol are removed from the host's
-- environment, so a suite run under systemd does not talk to it.
local function env_prefix(env)
  local parts = { "env -u NOTIFY_SOCKET -u WATCHDOG_USEC -u WATCHDOG_PID" }
  for k, v in pairs(env or {}) do parts[#parts + 1] = k .. "=" .. q(v) end
  return table.concat(parts, " ")
end

local function argv_text(args)
  local parts = {}
  for i, a in ipairs(args) do parts[i] = q(a) end
  return table.concat(parts, " ")
end

local Host = {}
Host.__index = Host

-- Start `sonde ARGS...` in the background in directory-owned temp files.
local function host_start(dir, args, env)
  Host.n = (Host.n or 0) + 1
  local base = string.format("%s/host%d", dir, Host.n)
  local h = setmetatable({ errf = base .. ".err", outf = base .. ".out",
    pidf = base .. ".pid", rcf = base .. ".rc" }, Host)
  local cmd = string.format("exec %s %s --log-level debug %s", env_prefix(env),
    q(BIN), argv_text(args))
  local inner = string.format("sh -c %s </dev/null >%s 2>%s & echo $! >%s; "
    .. "wait $!; echo $? >%s.tmp; mv %s.tmp %s", q(cmd), q(h.outf), q(h.errf),
    q(h.pidf), q(h.rcf), q(h.rcf), q(h.rcf))
  os.execute(string.format("sh -c %s </dev/null >/dev/null 2>&1 &", q(inner)))
  local deadline = helpers.now() + 5
  repeat
    local s = read_file(h.pidf)
    h.pid = s and tonumber(s:match("(%d+)\n"))
    if h.pid then break end
    sleep(0.02)
  until helpers.now() > deadline
  assert(h.pid, "the host did not start")
  return h
end

function Host:stderr() return read_file(self.errf) or "" end

function Host:events(name, where)
  return select(decode_lines(self:stderr()), name, where)
end

function Host:rc()
  local s = read_file(self.rcf)
  return s and tonumber(s:match("%d+"))
end

function Host:signal(sig)
  os.execute(string.format("kill -%s %d 2>/dev/null", sig, self.pid))
end

function Host:wait(timeout)
  local deadline = helpers.now() + (timeout or 10)
  repeat
    local rc = self:rc()
    if rc then return rc end
    sleep(0.05)
  until helpers.now() > deadline
  return self:rc()
end

function Host:wait_for(pred, timeout)
  local deadline = helpers.now() + (timeout or 10)
  repeat
    local v = pred(self)
    if v then return v end
    sleep(0.1)
  until helpers.now() > deadline
  return pred(self)
end

-- pids of the service instances the host logged.
function Host:service_pids()
  local pids = {}
  for _, e in ipairs(self:events("service_start")) do
    if tonumber(e.pid) then pids[#pids + 1] = math.tointeger(e.pid) end
  end
  return pids
end

-- Stop everything this host started: SIGTERM (the host stops its
-- services), SIGKILL after 10 s, then whatever is left in the services'
-- process groups.
function Host:cleanup()
  if not self.pid then return end
  if not self:rc() then
    self:signal("TERM")
    if not self:wait(10) then
      self:signal("KILL")
      self:wait(3)
    end
  end
  for _, pid in ipairs(self:service_pids()) do
    for _, p in ipairs(helpers.procs_in_groups(pid)) do
      os.execute(string.format("kill -KILL %d 2>/dev/null", p.pid))
    end
  end
end

-- true when pid is gone (or a zombie left to its new parent).
local function gone(pid)
  local s = read_file(string.format("/proc/%d/stat", pid))
  return s == nil or s:match("^%d+ %b() (%a)") == "Z"
end

---------------------------------------------------------------------------
-- Manifests
---------------------------------------------------------------------------

-- Replace every plain occurrence of `old`; returns the text and the count.
local function replace_all(s, old, new)
  local out, n, i = {}, 0, 1
  while true do
    local a, b = s:find(old, i, true)
    if not a then break end
    out[#out + 1] = s:sub(i, a - 1)
    out[#out + 1] = new
    n, i = n + 1, b + 1
  end
  out[#out + 1] = s:sub(i)
  return table.concat(out), n
end

-- A Pod with one container; `container` is YAML lines of the container
-- (after "- name: NAME"), `spec` extra YAML lines of the pod spec.
local function pod_yaml(name, container, spec)
  return table.concat({
    "apiVersion: v1",
    "kind: Pod",
    "metadata:",
    "  name: " .. name .. "-pod",
    "spec:",
    spec or "",
    "  containers:",
    "  - name: " .. name,
    container,
    "",
  }, "\n")
end

describe("sonde pod", function()
  local dir
  local hosts, servers = {}, {}

  before_each(function()
    dir = helpers.tmpdir()
  end)

  after_each(function()
    for _, h in ipairs(hosts) do h:cleanup() end
    hosts = {}
    for _, s in ipairs(servers) do s:stop() end
    servers = {}
    helpers.rmtree(dir)
  end)

  local function start(args, env)
    local h = host_start(dir, args, env)
    hosts[#hosts + 1] = h
    return h
  end

  local function pod(manifest, container)
    local args = { "--log-format", "json", "pod" }
    if container then
      args[#args + 1] = "--container"
      args[#args + 1] = container
    end
    args[#args + 1] = manifest
    return start(args)
  end

  local function manifest(name, text)
    return helpers.write(dir .. "/" .. name, text)
  end

  -- Run `sonde ARGS` to its end (bounded: SIGTERM after 10 s, SIGKILL 5 s
  -- later); returns the exit code and stderr.
  local function run_sync(args)
    local errf, outf = dir .. "/sync.err", dir .. "/sync.out"
    local _, _, code = os.execute(string.format(
      "timeout -k 5 10 %s %s %s </dev/null >%s 2>%s", env_prefix(), q(BIN),
      argv_text(args), q(outf), q(errf)))
    return code, read_file(errf) or "", read_file(outf) or ""
  end

  ---------------------------------------------------------------------------
  describe("examples/liveness-exec.yaml", function()
    after_each(function()
      os.remove("/tmp/healthy")
    end)

    it("runs as written: the container's args, the liveness probe "
      .. "succeeds, the image is reported ignored; SIGTERM stops it",
      function()
      local h = pod(EXAMPLE)
      local ok = h:wait_for(function(x)
        return #x:events("probe_result", { probe = "liveness-liveness",
          status = "success" }) >= 1
      end, 9)
      local text = h:stderr()
      assert.is_truthy(ok, "no successful liveness-liveness result within "
        .. "~8 s:\n" .. text)

      local starts = h:events("service_start", { service = "liveness" })
      assert.are.equal(1, #starts, text)
      local command = starts[1].command
      assert.are.equal("string", type(command), text)
      local want = "/bin/sh -c touch /tmp/healthy; sleep 30; "
      assert.are.equal(want, command:sub(1, #want), text)
      assert.are.equal("/bin/sh -c touch /tmp/healthy; sleep 30; "
        .. "rm -f /tmp/healthy; sleep 600", command)
      assert.is_truthy(read_file("/tmp/healthy"),
        "/tmp/healthy was not created")

      local ign = h:events("pod_ignored")
      assert.are.equal(1, #ign, text)
      assert.are.equal("liveness", ign[1].container)
      assert.are.equal("liveness-exec", ign[1].pod)
      local fields = {}
      for f in tostring(ign[1].fields):gmatch("[^,%s]+") do fields[f] = true end
      assert.is_true(fields.image, "pod_ignored fields: "
        .. tostring(ign[1].fields))

      -- nothing failed in the first seconds
      assert.are.equal(0, #h:events("probe_result", { status = "failure" }),
        text)
      assert.are.equal(0, #h:events("service_restart"), text)

      local pid = starts[1].pid
      assert.is_false(gone(pid), "service " .. pid .. " gone early")
      h:signal("TERM")
      local rc = h:wait(10)
      assert.are.equal(0, rc, h:stderr())
      assert.is_true(gone(pid), "service process " .. pid .. " still there")
      local left = helpers.procs_in_groups(pid)
      assert.are.equal(0, #left, helpers.describe_procs(left))
      local evs = h:events()
      local stop = index_of(evs, "host_stop")
      assert.is_truthy(stop, h:stderr())
      assert.is_truthy(index_of(evs, "service_stop", { service = "liveness" },
        stop), h:stderr())
    end)

    it("with short timings: the health file goes, liveness fails, the "
      .. "container restarts and the probe succeeds again", function()
      local text = assert(read_file(EXAMPLE))
      local health = dir .. "/healthy"
      local n
      text, n = replace_all(text, "sleep 30", "sleep 2")
      assert.are.equal(1, n)
      text, n = replace_all(text, "/tmp/healthy", health)
      assert.is_true(n >= 3, "the example names /tmp/healthy " .. n .. " times")
      text, n = replace_all(text, "initialDelaySeconds: 5",
        "initialDelaySeconds: 1")
      assert.are.equal(1, n)
      text, n = replace_all(text, "periodSeconds: 5", "periodSeconds: 1")
      assert.are.equal(1, n)
      local path = manifest("liveness-short.yaml", text)

      local h = pod(path)
      local function success_after_restart(x)
        local evs = x:events()
        local r = index_of(evs, "service_restart", { service = "liveness",
          why = "liveness" })
        return r and index_of(evs, "probe_result", {
          probe = "liveness-liveness", status = "success" }, r + 1)
      end
      local ok = h:wait_for(success_after_restart, 15)
      local log = h:stderr()
      assert.is_truthy(ok, "no restart followed by a success within 15 s:\n"
        .. log)
      local evs = h:events()
      local fail = index_of(evs, "state_change", { probe = "liveness-liveness",
        to = "failure" })
      assert.is_truthy(fail, log)
      local failures = select(evs, "probe_result", {
        probe = "liveness-liveness", status = "failure" })
      assert.is_true(#failures >= 3, log)
      local restart = index_of(evs, "service_restart", { service = "liveness",
        why = "liveness" })
      assert.is_true(restart > fail, log)
      assert.is_truthy(index_of(evs, "probe_result", {
        probe = "liveness-liveness", status = "success" }, restart + 1), log)
      assert.is_truthy(index_of(evs, "service_start", { service = "liveness",
        instance = 2 }, restart + 1), log)
      -- the health file was created again by the new instance
      assert.is_truthy(read_file(health), "the new instance did not create "
        .. health)

      h:signal("TERM")
      assert.are.equal(0, h:wait(10), h:stderr())
      for _, pid in ipairs(h:service_pids()) do
        assert.is_true(gone(pid), "service process " .. pid .. " left")
      end
    end)
  end)

  ---------------------------------------------------------------------------
  describe("manifests", function()
    it("a Deployment (after another document) runs its pod template's "
      .. "container", function()
      local path = manifest("deploy.yaml", [[
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports:
  - port: 80
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web-deploy
spec:
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:1.25
        resources:
          limits:
            memory: 64Mi
        command: ["sleep", "61"]
        livenessProbe:
          exec:
            command: ["true"]
          periodSeconds: 1
]])
      local h = pod(path)
      local ok = h:wait_for(function(x)
        return #x:events("probe_result", { probe = "web-liveness",
          status = "success" }) >= 1
      end, 10)
      assert.is_truthy(ok, h:stderr())
      local starts = h:events("service_start", { service = "web" })
      assert.are.equal(1, #starts, h:stderr())
      assert.are.equal("sleep 61", starts[1].command)
      local ign = h:events("pod_ignored")
      assert.are.equal(1, #ign, h:stderr())
      assert.are.equal("web-deploy", ign[1].pod)
      assert.are.equal("image,resources", ign[1].fields)
      h:signal("TERM")
      assert.are.equal(0, h:wait(10), h:stderr())
    end)

    it("a JSON manifest", function()
      local path = manifest("pod.json", [[
{
  "apiVersion": "v1",
  "kind": "Pod",
  "metadata": { "name": "json-pod" },
  "spec": {
    "containers": [
      {
        "name": "jc",
        "command": ["sleep"],
        "args": ["62"],
        "livenessProbe": {
          "exec": { "command": ["true"] },
          "periodSeconds": 1
        }
      }
    ]
  }
}
]])
      local h = pod(path)
      local ok = h:wait_for(function(x)
        return #x:events("probe_result", { probe = "jc-liveness",
          status = "success" }) >= 1
      end, 10)
      assert.is_truthy(ok, h:stderr())
      local starts = h:events("service_start", { service = "jc" })
      assert.are.equal(1, #starts, h:stderr())
      assert.are.equal("sleep 62", starts[1].command)
      -- nothing to ignore: no pod_ignored line
      assert.are.equal(0, #h:events("pod_ignored"), h:stderr())
      h:signal("TERM")
      assert.are.equal(0, h:wait(10), h:stderr())
    end)

    local TWO = [[
apiVersion: v1
kind: Pod
metadata:
  name: two
spec:
  containers:
  - name: app
    command: ["sleep", "63"]
    livenessProbe:
      exec:
        command: ["true"]
      periodSeconds: 1
  - name: sidecar
    command: ["sleep", "64"]
    livenessProbe:
      exec:
        command: ["true"]
      periodSeconds: 1
]]

    it("--container NAME picks that container", function()
      local path = manifest("two.yaml", TWO)
      local h = pod(path, "sidecar")
      local ok = h:wait_for(function(x)
        return #x:events("probe_result", { probe = "sidecar-liveness",
          status = "success" }) >= 2
      end, 10)
      local log = h:stderr()
      assert.is_truthy(ok, log)
      local starts = h:events("service_start")
      assert.are.equal(1, #starts, log)
      assert.are.equal("sidecar", starts[1].service)
      assert.are.equal("sleep 64", starts[1].command)
      assert.are.equal(0, #h:events("probe_result", { probe = "app-liveness" }),
        log)
      local hs = h:events("host_start")
      assert.are.equal(1, #hs, log)
      assert.are.equal(1, hs[1].services)
      assert.are.equal(1, hs[1].probes)
      h:signal("TERM")
      assert.are.equal(0, h:wait(10), h:stderr())
    end)

    it("without --container the first container runs", function()
      local path = manifest("two.yaml", TWO)
      local h = pod(path)
      local ok = h:wait_for(function(x)
        return #x:events("probe_result", { probe = "app-liveness",
          status = "success" }) >= 1
      end, 10)
      assert.is_truthy(ok, h:stderr())
      local starts = h:events("service_start")
      assert.are.equal(1, #starts, h:stderr())
      assert.are.equal("app", starts[1].service)
      h:signal("TERM")
      assert.are.equal(0, h:wait(10), h:stderr())
    end)

    it("an unknown --container exits 2 naming the available containers",
      function()
      local path = manifest("two.yaml", TWO)
      local code, err = run_sync({ "pod", "--container", "nosuch", path })
      assert.are.equal(2, code, err)
      assert.is_truthy(err:find("nosuch", 1, true), err)
      assert.is_truthy(err:find("app", 1, true), err)
      assert.is_truthy(err:find("sidecar", 1, true), err)
      assert.is_falsy(err:find("service_start", 1, true), err)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("rejected manifests exit 2 naming the field", function()
    -- name, manifest text, strings the message must contain
    local CASES = {
      { "env valueFrom", pod_yaml("c", [[
    command: ["sleep", "5"]
    env:
    - name: PLAIN
      value: "1"
    - name: DB_PASSWORD
      valueFrom:
        secretKeyRef:
          name: db
          key: password]]), { "valueFrom", "DB_PASSWORD" } },
      { "envFrom", pod_yaml("c", [[
    command: ["sleep", "5"]
    envFrom:
    - configMapRef:
        name: settings]]), { "envFrom" } },
      { "a gRPC probe", pod_yaml("c", [[
    command: ["sleep", "5"]
    livenessProbe:
      grpc:
        port: 9000]]), { "grpc", "livenessProbe" } },
      { "lifecycle hooks", pod_yaml("c", [=[
    command: ["sleep", "5"]
    lifecycle:
      preStop:
        exec:
          command: ["true"]]=]), { "lifecycle" } },
      { "no command or args", pod_yaml("c", [[
    image: busybox]]), { "command" } },
      { "not YAML", "kind: Pod\nspec: [unclosed\n  containers: {\n",
        { "YAML" } },
      { "no Pod in the file", [[
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  a: b
]], { "Pod" } },
    }
    for _, case in ipairs(CASES) do
      it(case[1], function()
        local path = manifest("bad.yaml", case[2])
        local code, err = run_sync({ "--log-format", "json", "pod", path })
        assert.are.equal(2, code, err)
        for _, want in ipairs(case[3]) do
          assert.is_truthy(err:find(want, 1, true),
            "message lacks " .. want .. ": " .. err)
        end
        assert.is_truthy(err:find(path, 1, true),
          "message lacks the manifest path: " .. err)
        assert.is_falsy(err:find("service_start", 1, true), err)
      end)
    end

    it("a missing manifest file", function()
      local path = dir .. "/nope.yaml"
      local code, err = run_sync({ "pod", path })
      assert.are.equal(2, code, err)
      assert.is_truthy(err:find(path, 1, true), err)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("container fields", function()
    local function output_lines(h, service)
      local lines = {}
      for _, e in ipairs(h:events("service_output", { service = service })) do
        lines[#lines + 1] = e.line
      end
      return lines
    end

    local function has_line(h, service, line)
      for _, l in ipairs(output_lines(h, service)) do
        if l == line then return true end
      end
      return false
    end

    it("env entries expand in order; $(VAR) in args expands from them",
      function()
      local path = manifest("env.yaml", pod_yaml("envc", [[
    command: ["sh", "-c"]
    args:
    - >-
      echo $ZOO; echo "EARLY=$EARLY"; echo ARG=$(GREETING)-$(FOO);
      echo '$(NOPE)'; sleep 60
    env:
    - name: EARLY
      value: "$(LATER)x"
    - name: FOO
      value: bar
    - name: ZOO
      value: "$(FOO)-1"
    - name: GREETING
      value: hello
    - name: LATER
      value: "y"]]))
      local h = pod(path)
      local ok = h:wait_for(function(x)
        return #output_lines(x, "envc") >= 4
      end, 10)
      local log = h:stderr()
      assert.is_truthy(ok, log)
      -- $ZOO is the shell's: the env entry ZOO=$(FOO)-1 expanded by sonde
      assert.is_true(has_line(h, "envc", "bar-1"), log)
      -- a reference to a later entry is left as written
      assert.is_true(has_line(h, "envc", "EARLY=$(LATER)x"), log)
      -- $(VAR) in args: expanded by sonde before the shell sees it
      assert.is_true(has_line(h, "envc", "ARG=hello-bar"), log)
      -- an unknown name stays as written
      assert.is_true(has_line(h, "envc", "$(NOPE)"), log)
      local start = h:events("service_start", { service = "envc" })[1]
      assert.is_truthy(start, log)
      assert.is_truthy(start.command:find("echo ARG=hello-bar", 1, true),
        start.command)
    end)

    -- The kubelet expands command/args once: "$$(FOO)" becomes the
    -- literal "$(FOO)", which is not expanded again.  Likewise in values.
    it("$$(VAR) escapes, in args and in env values (expanded once)",
      function()
      local path = manifest("escape.yaml", pod_yaml("esc", [[
    command: ["sh", "-c"]
    args:
    - >-
      echo 'ARG=$$(FOO)'; echo "VAL=$ESCAPED"; sleep 60
    env:
    - name: FOO
      value: bar
    - name: ESCAPED
      value: "$$(FOO)"]]))
      local h = pod(path)
      local ok = h:wait_for(function(x)
        return #output_lines(x, "esc") >= 2
      end, 10)
      local log = h:stderr()
      assert.is_truthy(ok, log)
      assert.is_true(has_line(h, "esc", "VAL=$(FOO)"), log)
      local start = h:events("service_start", { service = "esc" })[1]
      assert.are.equal("sh -c echo 'ARG=$(FOO)'; echo \"VAL=$ESCAPED\"; "
        .. "sleep 60", start.command)
      assert.is_true(has_line(h, "esc", "ARG=$(FOO)"), log)
    end)

    it("workingDir", function()
      local wd = dir .. "/work dir"
      assert(os.execute("mkdir " .. q(wd)))
      local p = io.popen("realpath " .. q(wd))
      local real = p:read("l")
      p:close()
      local path = manifest("wd.yaml", pod_yaml("wdc", string.format([[
    command: ["sh", "-c", "pwd -P; sleep 60"]
    workingDir: '%s']], wd)))
      local h = pod(path)
      local ok = h:wait_for(function(x)
        return #output_lines(x, "wdc") >= 1
      end, 10)
      assert.is_truthy(ok, h:stderr())
      assert.are.equal(real, output_lines(h, "wdc")[1], h:stderr())
    end)

    it("a named port used by an httpGet probe", function()
      local srv = fixture.start { host = "127.0.0.1", log = true }
      servers[#servers + 1] = srv
      local path = manifest("port.yaml", pod_yaml("web", string.format([[
    command: ["sleep", "60"]
    ports:
    - name: metrics
      containerPort: 1
    - name: http
      containerPort: %d
    readinessProbe:
      httpGet:
        path: /ok
        port: http
      periodSeconds: 1]], srv.port)))
      local h = pod(path)
      local ok = h:wait_for(function(x)
        return #x:events("probe_result", { probe = "web-readiness",
          status = "success" }) >= 1
      end, 10)
      local log = h:stderr()
      assert.is_truthy(ok, log)
      local r = h:events("probe_result", { probe = "web-readiness" })[1]
      assert.are.equal("success", r.status, log)
      assert.are.equal(200, r.http_status, log)
      assert.is_truthy(index_of(h:events(), "state_change", {
        probe = "web-readiness", to = "success" }), log)
      local reqs = srv:requests()
      assert.is_true(#reqs >= 1, "the fixture got no request")
      assert.are.equal("/ok", fixture.request_target(reqs[1]))
    end)

    it("restartPolicy Never: a container that exits is not restarted",
      function()
      local path = manifest("never.yaml", pod_yaml("once", [=[
    command: ["sh", "-c", "echo started; exit 3"]]=], "  restartPolicy: Never"))
      local h = pod(path)
      local ok = h:wait_for(function(x)
        return #x:events("service_exit", { service = "once" }) >= 1
      end, 10)
      assert.is_truthy(ok, h:stderr())
      sleep(2.5)   -- "Always" restarts at once (see the next case)
      local log = h:stderr()
      assert.are.equal(1, #h:events("service_start", { service = "once" }), log)
      assert.are.equal(0, #h:events("service_restart"), log)
      assert.are.equal(3, h:events("service_exit")[1].exit_code, log)
    end)

    it("restartPolicy Always (the default): a container that exits is "
      .. "restarted", function()
      local path = manifest("always.yaml", pod_yaml("again", [=[
    command: ["sh", "-c", "echo started; exit 3"]]=]))
      local h = pod(path)
      local ok = h:wait_for(function(x)
        return #x:events("service_start", { service = "again" }) >= 2
      end, 10)
      local log = h:stderr()
      assert.is_truthy(ok, log)
      assert.is_truthy(index_of(h:events(), "service_restart", {
        service = "again", why = "exit" }), log)
    end)

    it("terminationGracePeriodSeconds: a container ignoring SIGTERM is "
      .. "killed after it", function()
      local path = manifest("grace.yaml", pod_yaml("stubborn", [[
    command: ["sh", "-c"]
    args:
    - 'trap "" TERM; echo ready; while :; do sleep 0.1; done']],
        "  terminationGracePeriodSeconds: 1"))
      local h = pod(path)
      local ok = h:wait_for(function(x)
        return #output_lines(x, "stubborn") >= 1
      end, 10)
      assert.is_truthy(ok, h:stderr())
      local pid = h:service_pids()[1]
      local t0 = helpers.now()
      h:signal("TERM")
      local rc = h:wait(15)
      local took = helpers.now() - t0
      local log = h:stderr()
      assert.are.equal(0, rc, log)
      assert.is_true(took >= 0.8, string.format("stopped after %.2f s: the "
        .. "TERM was not ignored?\n%s", took, log))
      assert.is_true(took < 4, string.format("stopped after %.2f s, grace "
        .. "is 1 s\n%s", took, log))
      local exit = h:events("service_exit", { service = "stubborn" })[1]
      assert.is_truthy(exit, log)
      assert.are.equal(9, exit.signal, log)
      assert.is_true(gone(pid))
      local left = helpers.procs_in_groups(pid)
      assert.are.equal(0, #left, helpers.describe_procs(left))
    end)
  end)
end)
