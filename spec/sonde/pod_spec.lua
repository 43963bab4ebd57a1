-- `sonde pod MANIFEST`: a Kubernetes manifest run by the host, as a
-- subprocess (`$SONDE_BUILD/bin/sonde --log-format json pod ...`), its
-- event lines read back from a temporary stderr file.  The contract is
-- lua/sonde/pod.lua, lua/sonde/k8s.lua and README "Kubernetes manifests".
local helpers = require "helpers"

local q, read_file = helpers.q, helpers.read_file
local select, index_of, gone = helpers.select, helpers.index_of, helpers.gone

local EXAMPLE = "examples/liveness-exec.yaml"

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

  before_each(function()
    dir = helpers.scratch()
  end)

  after_each(function()
    helpers.cleanup_hosts()
    helpers.stop_fixtures()
  end)

  local function pod(manifest, container)
    local args = { "--log-format", "json", "pod" }
    if container then
      args[#args + 1] = "--container"
      args[#args + 1] = container
    end
    args[#args + 1] = manifest
    return helpers.host_start(args)
  end

  -- Start `sonde pod MANIFEST` and wait (10 s at most) until cond(host):
  -- the host and its log.
  local function pod_until(cond, manifest_path, container)
    local h = pod(manifest_path, container)
    local ok = h:wait_for(cond, 10)
    local log = h:stderr()
    assert.is_truthy(ok, log)
    return h, log
  end

  -- A condition: `n` (default 1) successful results of `probe`.
  local function successes(probe, n)
    return function(x)
      return #x:events("probe_result", { probe = probe, status = "success" }) >= (n or 1)
    end
  end

  local function manifest(name, text)
    return helpers.write(dir .. "/" .. name, text)
  end

  -- Run `sonde ARGS` to its end: the exit code and stderr.
  local function run_sync(args)
    local code, _, err = helpers.host_run(args, nil, 15)
    return code, err
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

      assert.are.equal(0, h:term(), h:stderr())
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
      local h, log = pod_until(successes("web-liveness"), path)
      local starts = h:events("service_start", { service = "web" })
      assert.are.same({ 1, "sleep 61" }, { #starts, starts[1].command }, log)
      local ign = h:events("pod_ignored")
      assert.are.equal(1, #ign, h:stderr())
      assert.are.equal("web-deploy", ign[1].pod)
      assert.are.equal("image,resources", ign[1].fields)
      assert.are.equal(0, h:term(), h:stderr())
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
      local h, log = pod_until(successes("jc-liveness"), path)
      local starts = h:events("service_start", { service = "jc" })
      assert.are.same({ 1, "sleep 62" }, { #starts, starts[1].command }, log)
      -- nothing to ignore: no pod_ignored line
      assert.are.equal(0, #h:events("pod_ignored"), h:stderr())
      assert.are.equal(0, h:term(), h:stderr())
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
  - name: helper
    command: ["sleep", "64"]
    livenessProbe:
      exec:
        command: ["true"]
      periodSeconds: 1
]]

    it("--container NAME picks that container", function()
      local path = manifest("two.yaml", TWO)
      local h, log = pod_until(successes("helper-liveness", 2), path, "helper")
      local starts = h:events("service_start")
      assert.are.equal(1, #starts, log)
      assert.are.equal("helper", starts[1].service)
      assert.are.equal("sleep 64", starts[1].command)
      assert.are.equal(0, #h:events("probe_result", { probe = "app-liveness" }),
        log)
      local hs = h:events("host_start")
      assert.are.equal(1, #hs, log)
      assert.are.equal(1, hs[1].services)
      assert.are.equal(1, hs[1].probes)
      assert.are.equal(0, h:term(), h:stderr())
    end)

    it("without --container every container runs, with its own probes",
      function()
      local path = manifest("two.yaml", TWO)
      local h = pod_until(function(x)
        return successes("app-liveness")(x) and successes("helper-liveness")(x)
      end, path)
      local starts = h:events("service_start")
      assert.are.equal(2, #starts, h:stderr())
      assert.are.same({ "app", "helper" }, { starts[1].service,
        starts[2].service })
      assert.are.same({ "sleep 63", "sleep 64" }, { starts[1].command,
        starts[2].command })
      assert.are.equal(0, h:term(), h:stderr())
    end)

    it("an unknown --container exits 2 naming the available containers",
      function()
      local path = manifest("two.yaml", TWO)
      local code, err = run_sync({ "pod", "--container", "nosuch", path })
      assert.are.equal(2, code, err)
      assert.is_truthy(err:find("nosuch", 1, true), err)
      assert.is_truthy(err:find("app", 1, true), err)
      assert.is_truthy(err:find("helper", 1, true), err)
      assert.is_falsy(err:find("service_start", 1, true), err)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("rejected manifests exit 2 naming the field", function()
    -- name, manifest text, strings the message must contain
    local CASES = {
      { "a gRPC probe with a named port (the kubelet takes a number only)",
        pod_yaml("c", [[
    command: ["sleep", "5"]
    ports:
    - name: grpc
      containerPort: 9000
    livenessProbe:
      grpc:
        port: grpc]]), { "grpc.port", "livenessProbe", "named port" } },
      { "a gRPC probe with an unknown field", pod_yaml("c", [[
    command: ["sleep", "5"]
    livenessProbe:
      grpc:
        port: 9000
        host: 127.0.0.1]]), { "grpc", "unknown field", "host" } },
      { "no command or args", pod_yaml("c", [[
    image: busybox]]), { "command" } },
      { "a probe on an init container that is not a sidecar", [[
apiVersion: v1
kind: Pod
metadata: { name: p }
spec:
  initContainers:
  - name: setup
    command: ["true"]
    readinessProbe:
      exec: { command: ["true"] }
  containers:
  - { name: c, command: ["sleep", "5"] }
]], { "initContainers[0] (setup)", "readinessProbe",
        "restartPolicy=Always" } },
      { "an init container's restartPolicy other than Always", [[
apiVersion: v1
kind: Pod
metadata: { name: p }
spec:
  initContainers:
  - { name: setup, command: ["true"], restartPolicy: OnFailure }
  containers:
  - { name: c, command: ["sleep", "5"] }
]], { "initContainers[0] (setup)", "restartPolicy", "OnFailure" } },
      { "a name used twice", [[
apiVersion: v1
kind: Pod
metadata: { name: p }
spec:
  initContainers:
  - { name: c, command: ["true"] }
  containers:
  - { name: c, command: ["sleep", "5"] }
]], { "containers[0] (c)", "initContainers[0]" } },
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

    -- Run a pod of one container `name` (YAML lines `container`, pod spec
    -- lines `spec`) until its service has printed `n` lines: host, log.
    local function printed(name, container, n, spec)
      local path = manifest(name .. ".yaml", pod_yaml(name, container, spec))
      return pod_until(function(x) return #output_lines(x, name) >= n end, path)
    end

    it("env entries expand in order; $(VAR) in args expands from them",
      function()
      local h, log = printed("envc", [[
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
      value: "y"]], 4)
      -- $ZOO is the shell's: the env entry ZOO=$(FOO)-1 expanded by sonde
      assert.is_true(has_line(h, "envc", "bar-1"), log)
      -- a reference to a later entry is left as written
      assert.is_true(has_line(h, "envc", "EARLY=$(LATER)x"), log)
      -- $(VAR) in args: expanded by sonde before the shell sees it
      assert.is_true(has_line(h, "envc", "ARG=hello-bar"), log)
      -- an unknown name stays as written
      assert.is_true(has_line(h, "envc", "$(NOPE)"), log)
      -- the log shows the command as written, not the values of env
      local start = h:events("service_start", { service = "envc" })[1]
      assert.is_truthy(start, log)
      assert.is_truthy(start.command:find("echo ARG=$(GREETING)-$(FOO)", 1,
        true), start.command)
    end)

    -- The kubelet expands command/args once: "$$(FOO)" becomes the
    -- literal "$(FOO)", which is not expanded again.  Likewise in values.
    it("$$(VAR) escapes, in args and in env values (expanded once)",
      function()
      local h, log = printed("esc", [[
    command: ["sh", "-c"]
    args:
    - >-
      echo 'ARG=$$(FOO)'; echo "VAL=$ESCAPED"; sleep 60
    env:
    - name: FOO
      value: bar
    - name: ESCAPED
      value: "$$(FOO)"]], 2)
      assert.is_true(has_line(h, "esc", "VAL=$(FOO)"), log)
      local start = h:events("service_start", { service = "esc" })[1]
      assert.are.equal("sh -c echo 'ARG=$$(FOO)'; echo \"VAL=$ESCAPED\"; "
        .. "sleep 60", start.command)       -- as written
      assert.is_true(has_line(h, "esc", "ARG=$(FOO)"), log)
    end)

    it("workingDir", function()
      local wd = dir .. "/work dir"
      assert(os.execute("mkdir " .. q(wd)))
      local p = io.popen("realpath " .. q(wd))
      local real = p:read("l")
      p:close()
      local h, log = printed("wdc", string.format([[
    command: ["sh", "-c", "pwd -P; sleep 60"]
    workingDir: '%s']], wd), 1)
      assert.are.equal(real, output_lines(h, "wdc")[1], h:stderr())
    end)

    it("a named port used by an httpGet probe", function()
      local srv = helpers.fixture { host = "127.0.0.1", log = true }
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
      local h, log = pod_until(successes("web-readiness"), path)
      local r = h:events("probe_result", { probe = "web-readiness" })[1]
      assert.are.equal("success", r.status, log)
      assert.are.equal(200, r.http_status, log)
      assert.is_truthy(index_of(h:events(), "state_change", {
        probe = "web-readiness", to = "success" }), log)
      local reqs = srv:requests()
      assert.is_true(#reqs >= 1, "the fixture got no request")
      assert.are.equal("/ok", helpers.request_target(reqs[1]))
    end)

    it("a grpc probe: port and service, against a gRPC health server",
      function()
      local g = helpers.grpc_server { "--status", "=SERVING",
        "--status", "db=NOT_SERVING" }
      local path = manifest("grpc.yaml", pod_yaml("app", string.format([[
    command: ["sleep", "60"]
    readinessProbe:
      grpc:
        port: %d
      periodSeconds: 1
    livenessProbe:
      grpc:
        port: %d
        service: db
      periodSeconds: 1
      failureThreshold: 1]], g.port, g.port)))
      local h, log = pod_until(function(x)
        return successes("app-readiness")(x) and
          #x:events("probe_result", { probe = "app-liveness" }) >= 1
      end, path)
      local r = h:events("probe_result", { probe = "app-readiness" })[1]
      assert.are.same({ "success", "ok", 0, "SERVING" },
        { r.status, r.reason, r.grpc_status, r.serving_status }, log)
      local l = h:events("probe_result", { probe = "app-liveness" })[1]
      assert.are.same({ "failure", "grpc_status", "NOT_SERVING",
        'service unhealthy (responded with "NOT_SERVING")' },
        { l.status, l.reason, l.serving_status, l.output }, log)
      helpers.cleanup_hosts()
      g:stop()
    end)

    it("restartPolicy Never: a container that exits is not restarted",
      function()
      local path = manifest("never.yaml", pod_yaml("once", [=[
    command: ["sh", "-c", "echo started; exit 3"]]=], "  restartPolicy: Never"))
      local h, log = pod_until(function(x)
        return #x:events("service_exit", { service = "once" }) >= 1
      end, path)
      helpers.sleep(2.5)   -- "Always" restarts at once (see the next case)
      local log = h:stderr()
      assert.are.equal(1, #h:events("service_start", { service = "once" }), log)
      assert.are.equal(0, #h:events("service_restart"), log)
      assert.are.equal(3, h:events("service_exit")[1].exit_code, log)
    end)

    it("restartPolicy Always (the default): a container that exits is "
      .. "restarted", function()
      local path = manifest("always.yaml", pod_yaml("again", [=[
    command: ["sh", "-c", "echo started; exit 3"]]=]))
      local h, log = pod_until(function(x)
        return #x:events("service_start", { service = "again" }) >= 2
      end, path)
      assert.is_truthy(index_of(h:events(), "service_restart", {
        service = "again", why = "exit" }), log)
    end)

    it("terminationGracePeriodSeconds: a container ignoring SIGTERM is "
      .. "killed after it", function()
      local h, log = printed("stubborn", [[
    command: ["sh", "-c"]
    args:
    - 'trap "" TERM; echo ready; while :; do sleep 0.1; done']], 1, "  terminationGracePeriodSeconds: 1")
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
