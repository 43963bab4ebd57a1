-- `sonde pod`: a pod run as the kubelet runs it (sonde.podrun, sonde.pod):
-- init containers in order, sidecars, every app container with its own
-- probes, the termination order, /readyz and /status for the pod and its
-- containers, and what sonde cannot do warned once.  The host runs as a
-- subprocess on manifests whose containers are shell commands; what they
-- write to files and the host's JSON log show the order.  Every case waits
-- on conditions and ends with nothing of the pod left running.
local helpers = require "helpers"

local index_of, select, gone = helpers.index_of, helpers.select, helpers.gone
local read_file = helpers.read_file

describe("sonde pod: the kubelet's pod", function()
  local mdir, wdir     -- manifests; the files the containers write

  before_each(function()
    mdir, wdir = helpers.scratch(), helpers.scratch()
  end)

  after_each(function()
    helpers.cleanup_hosts()
  end)

  -- A manifest from `text`, with @W@ standing for the work directory.
  local function manifest(text)
    local path = mdir .. "/pod.yaml"
    helpers.write(path, (text:gsub("@W@", wdir)))
    return path
  end

  local function pod(path, extra)
    local args = { "--log-format", "json", "pod" }
    for _, a in ipairs(extra or {}) do args[#args + 1] = a end
    args[#args + 1] = path
    return helpers.host_start(args)
  end

  -- The lines a pod's containers appended to @W@/order.
  local function order()
    return helpers.lines(read_file(wdir .. "/order") or "")
  end

  -- Wait (at most `timeout` s, default 15) until cond(h); fail with the
  -- log if it does not come.
  local function await(h, cond, what, timeout)
    local ok = h:wait_for(cond, timeout or 15)
    assert.is_truthy(ok, (what or "condition") .. " did not come:\n"
      .. h:stderr())
    return ok
  end

  local function has(name, where, n)
    return function(x) return #x:events(name, where) >= (n or 1) end
  end

  -- SIGTERM the host; it exits 0 and every process of the pod is gone:
  -- the services' processes and groups, and anything whose command line
  -- names the work directory.
  local function term_clean(h)
    local rc = h:term(20)
    local log = h:stderr()
    assert.are.equal(0, rc, log)
    local pids = h:service_pids()
    for _, pid in ipairs(pids) do
      assert.is_true(gone(pid), "service process " .. pid .. " left\n" .. log)
    end
    local left = helpers.procs_in_groups(pids)
    assert.are.equal(0, #left, helpers.describe_procs(left))
    left = helpers.procs_matching((wdir:gsub("%p", "%%%0")))
    assert.are.equal(0, #left, helpers.describe_procs(left))
    return log
  end

  -- The pid of the service's latest instance.
  local function pid_of(h, name)
    local starts = h:events("service_start", { service = name })
    return starts[#starts] and math.tointeger(starts[#starts].pid)
  end

  ---------------------------------------------------------------------------
  it("init containers run in order, each to completion, before the app "
    .. "containers start together", function()
    local h = pod(manifest [[
apiVersion: v1
kind: Pod
metadata: { name: ordered }
spec:
  initContainers:
  - name: first
    command: ["sh", "-c", "sleep 0.3; echo first >> @W@/order"]
  - name: second
    command: ["sh", "-c", "sleep 0.3; echo second >> @W@/order"]
  containers:
  - name: a
    command: ["sh", "-c", "echo a >> @W@/order; exec sleep 600"]
  - name: b
    command: ["sh", "-c", "echo b >> @W@/order; exec sleep 600"]
]])
    await(h, function() return #order() >= 4 end, "four lines in order")
    local lines = order()
    assert.are.same({ "first", "second" }, { lines[1], lines[2] })
    table.sort(lines, function(x, y) return x < y end)
    assert.are.same({ "a", "b", "first", "second" }, lines)
    local evs = h:events()
    local function at(name, svc)
      local i = index_of(evs, name, { service = svc })
      assert.is_truthy(i, name .. " " .. svc .. "\n" .. h:stderr())
      return i
    end
    -- each starts only once the one before it exited 0
    assert.is_true(at("service_exit", "first") < at("service_start", "second"))
    assert.is_true(at("service_exit", "second") < at("service_start", "a"))
    assert.is_true(at("service_exit", "second") < at("service_start", "b"))
    assert.are.equal(0, select(evs, "service_exit", { service = "first" })[1]
      .exit_code)
    local running = index_of(evs, "pod_phase", { pod = "ordered",
      phase = "Running" })
    assert.is_true(running > at("service_exit", "second"))
    assert.is_true(running < at("service_start", "a"))
    -- init containers run once: not again
    assert.are.equal(1, #h:events("service_start", { service = "first" }))
    assert.are.equal(0, #h:events("service_restart"), h:stderr())
    term_clean(h)
  end)

  it("a failing init container is retried (restartPolicy Always) while "
    .. "the pod waits; once it succeeds the app starts", function()
    local h = pod(manifest [[
apiVersion: v1
kind: Pod
metadata: { name: retry }
spec:
  initContainers:
  - name: setup
    command: ["sh", "-c"]
    args:
    - |
      echo try >> @W@/order
      if [ -e @W@/tried ]; then exit 0; fi
      touch @W@/tried; exit 1
  containers:
  - name: app
    command: ["sh", "-c", "echo app >> @W@/order; exec sleep 600"]
]])
    await(h, has("service_start", { service = "app" }), "the app's start")
    local evs = h:events()
    local fail = index_of(evs, "service_exit", { service = "setup",
      exit_code = 1 })
    local restart = index_of(evs, "service_restart", { service = "setup",
      why = "exit" })
    local ok = index_of(evs, "service_exit", { service = "setup",
      exit_code = 0 })
    local app = index_of(evs, "service_start", { service = "app" })
    assert.is_truthy(fail and restart and ok and app, h:stderr())
    assert.is_true(fail < restart and restart < ok and ok < app, h:stderr())
    await(h, function() return #order() >= 3 end, "the app's line")
    assert.are.same({ "try", "try", "app" }, order())
    assert.are.equal(2, #h:events("service_start", { service = "setup" }))
    term_clean(h)
  end)

  it("restartPolicy Never: a failing init container fails the pod; its "
    .. "app containers never start and its sidecar is stopped", function()
    local h = pod(manifest [[
apiVersion: v1
kind: Pod
metadata: { name: doomed }
spec:
  restartPolicy: Never
  initContainers:
  - name: proxy
    restartPolicy: Always
    command: ["sh", "-c", "echo proxy >> @W@/order; exec sleep 600"]
  - name: setup
    command: ["sh", "-c", "echo setup >> @W@/order; exit 4"]
  containers:
  - name: app
    command: ["sh", "-c", "echo app >> @W@/order; exec sleep 600"]
]], { "--listen", "127.0.0.1:0" })
    local port = helpers.listen_port(h)
    await(h, has("service_stop", { service = "proxy" }), "the sidecar's stop")
    local failed = h:events("pod_phase", { phase = "Failed" })
    assert.are.equal(1, #failed, h:stderr())
    assert.are.same({ "error", "doomed", "init_failed", "setup", 4 },
      { failed[1].level, failed[1].pod, failed[1].reason,
        failed[1].container, failed[1].exit_code })
    assert.is_truthy(failed[1].detail:find("not started", 1, true))
    local r = helpers.fetch(port, "/readyz")
    assert.are.equal(503, r.http_status)
    assert.is_truthy(r.body:find("pod doomed: Failed", 1, true), r.body)
    r = helpers.fetch(port, "/readyz?container=setup")
    assert.are.same({ 503, "init container not completed (terminated, Error, "
      .. "exit code 4)" }, { r.http_status, (r.body:gsub("%s+$", "")) })
    local st = helpers.json_decode(helpers.fetch(port, "/status").body)
    local p = st.pods.doomed
    assert.are.equal("Failed", p.phase)
    assert.are.same({ "proxy", "sidecar", "terminated" }, { p.containers[1].name,
      p.containers[1].kind, p.containers[1].state })
    assert.are.same({ "setup", "init", "terminated", 4 }, { p.containers[2].name,
      p.containers[2].kind, p.containers[2].state, p.containers[2].exit_code })
    assert.are.same({ "app", "app", "waiting" }, { p.containers[3].name,
      p.containers[3].kind, p.containers[3].state })
    local log = term_clean(h)
    -- not retried, and the app never ran
    assert.are.equal(1, #h:events("service_start", { service = "setup" }), log)
    assert.are.equal(0, #h:events("service_start", { service = "app" }), log)
    -- (a sidecar without a startup probe has started once it runs: the
    -- next one may run, and here fail the pod, before it prints)
    local lines = order()
    assert.are.equal("setup", lines[#lines], log)
    assert.is_true(#lines <= 2 and (#lines == 1 or lines[1] == "proxy"), log)
    local evs = h:events()
    assert.is_true(index_of(evs, "service_start", { service = "proxy" })
      < index_of(evs, "service_start", { service = "setup" }), log)
  end)

  it("a sidecar starts before the app containers, once its startup probe "
    .. "succeeded, and runs beside them", function()
    local h = pod(manifest [[
apiVersion: v1
kind: Pod
metadata: { name: side }
spec:
  initContainers:
  - name: proxy
    restartPolicy: Always
    command: ["sh", "-c"]
    args:
    - |
      echo proxy >> @W@/order
      sleep 0.5; touch @W@/proxy-up; exec sleep 600
    startupProbe:
      exec: { command: ["test", "-e", "@W@/proxy-up"] }
      periodSeconds: 1
      failureThreshold: 30
  - name: setup
    command: ["sh", "-c", "echo setup >> @W@/order"]
  containers:
  - name: app
    command: ["sh", "-c", "echo app >> @W@/order; exec sleep 600"]
]])
    await(h, has("service_start", { service = "app" }), "the app's start")
    -- (the app's shell writes its line after its start is logged)
    await(h, function() return #order() >= 3 end, "the app's line")
    assert.are.same({ "proxy", "setup", "app" }, order())
    local evs = h:events()
    local started = index_of(evs, "state_change", { probe = "proxy-startup",
      to = "success" })
    assert.is_truthy(started, h:stderr())
    assert.is_true(started < index_of(evs, "service_start",
      { service = "setup" }), h:stderr())
    -- the sidecar's first instance still runs beside the app
    local proxy = pid_of(h, "proxy")
    assert.are.equal(1, #h:events("service_start", { service = "proxy" }))
    assert.is_false(gone(proxy))
    assert.is_false(gone(pid_of(h, "app")))
    term_clean(h)
  end)

  it("a sidecar that exits is restarted, even with restartPolicy Never; "
    .. "the app container is not touched", function()
    local h = pod(manifest [[
apiVersion: v1
kind: Pod
metadata: { name: flaky }
spec:
  restartPolicy: Never
  initContainers:
  - name: proxy
    restartPolicy: Always
    command: ["sh", "-c", "echo proxy >> @W@/order; sleep 0.5; exit 0"]
  containers:
  - name: app
    command: ["sh", "-c", "echo app >> @W@/order; exec sleep 600"]
]])
    await(h, has("service_start", { service = "proxy", instance = 2 }),
      "the sidecar's second instance")
    local evs = h:events()
    assert.is_truthy(index_of(evs, "service_restart", { service = "proxy",
      why = "exit" }), h:stderr())
    assert.are.equal(1, #h:events("service_start", { service = "app" }))
    assert.is_false(gone(pid_of(h, "app")))
    assert.are.equal(0, #h:events("pod_phase", { phase = "Failed" }))
    term_clean(h)
  end)

  it("SIGTERM stops the app containers first, then the sidecars, last "
    .. "first", function()
    -- each writes its line when it gets SIGTERM, the app and the later
    -- sidecar only after a while: stopped together, the others' lines
    -- would come first
    local h = pod(manifest [[
apiVersion: v1
kind: Pod
metadata: { name: stopper }
spec:
  terminationGracePeriodSeconds: 10
  initContainers:
  - name: first
    restartPolicy: Always
    command: ["sh", "-c"]
    args:
    - |
      trap 'echo first-term >> @W@/order; exit 0' TERM
      echo first-up >> @W@/order; touch @W@/first-up
      while :; do sleep 0.05; done
    startupProbe:
      exec: { command: ["test", "-e", "@W@/first-up"] }
      periodSeconds: 1
  - name: second
    restartPolicy: Always
    command: ["sh", "-c"]
    args:
    - |
      trap 'sleep 0.3; echo second-term >> @W@/order; exit 0' TERM
      echo second-up >> @W@/order; touch @W@/second-up
      while :; do sleep 0.05; done
    startupProbe:
      exec: { command: ["test", "-e", "@W@/second-up"] }
      periodSeconds: 1
  containers:
  - name: app
    command: ["sh", "-c"]
    args:
    - |
      trap 'sleep 0.6; echo app-term >> @W@/order; exit 0' TERM
      echo app-up >> @W@/order
      while :; do sleep 0.05; done
]])
    await(h, function() return #order() >= 3 end, "three containers up")
    assert.are.same({ "first-up", "second-up", "app-up" }, order())
    local log = term_clean(h)
    assert.are.same({ "first-up", "second-up", "app-up", "app-term",
      "second-term", "first-term" }, order(), log)
    local evs = h:events()
    local app = index_of(evs, "service_stop", { service = "app" })
    local second = index_of(evs, "service_stop", { service = "second" })
    local first = index_of(evs, "service_stop", { service = "first" })
    assert.is_truthy(app and second and first, log)
    assert.is_true(app < second and second < first, log)
    -- stopped, not crashed: each exited 0 on its SIGTERM
    for _, n in ipairs { "app", "second", "first" } do
      assert.are.equal(0, h:events("service_exit", { service = n })[1]
        .exit_code, log)
    end
  end)

  it("a sidecar that exits while the pod stops is not started again",
    function()
    local h = pod(manifest [[
apiVersion: v1
kind: Pod
metadata: { name: ending }
spec:
  initContainers:
  - name: proxy
    restartPolicy: Always
    command: ["sh", "-c"]
    args:
    - |
      echo proxy-up >> @W@/order
      while [ ! -e @W@/app-stopping ]; do sleep 0.05; done
      echo proxy-exit >> @W@/order; exit 1
  containers:
  - name: app
    command: ["sh", "-c"]
    args:
    - |
      trap 'touch @W@/app-stopping; sleep 0.5; exit 0' TERM
      echo app-up >> @W@/order
      while :; do sleep 0.05; done
]])
    await(h, function() return #order() >= 2 end, "both up")
    local log = term_clean(h)
    local lines = order()
    assert.are.equal("proxy-exit", table.remove(lines), log)
    table.sort(lines)
    assert.are.same({ "app-up", "proxy-up" }, lines, log)
    assert.are.equal(1, #h:events("service_start", { service = "proxy" }), log)
    assert.are.equal(0, #h:events("service_restart"), log)
  end)

  it("two app containers each run their own probes: a failing liveness "
    .. "restarts only its container", function()
    local h = pod(manifest [[
apiVersion: v1
kind: Pod
metadata: { name: pair }
spec:
  containers:
  - name: sick
    command: ["sleep", "600"]
    livenessProbe:
      exec: { command: ["test", "-e", "@W@/never"] }
      periodSeconds: 1
      failureThreshold: 2
  - name: well
    command: ["sleep", "601"]
    livenessProbe:
      exec: { command: ["true"] }
      periodSeconds: 1
    readinessProbe:
      exec: { command: ["true"] }
      periodSeconds: 1
]])
    await(h, has("service_start", { service = "sick", instance = 2 }),
      "the sick container's restart")
    await(h, has("probe_result", { probe = "well-liveness",
      status = "success" }, 2), "the well container's liveness runs")
    local log = h:stderr()
    assert.are.equal(1, #h:events("service_restart", { service = "sick",
      why = "liveness" }), log)
    assert.are.equal(0, #h:events("service_restart", { service = "well" }),
      log)
    assert.are.equal(1, #h:events("service_start", { service = "well" }), log)
    assert.is_true(#h:events("probe_result", { probe = "well-readiness",
      status = "success" }) >= 1, log)
    assert.are.equal(0, #h:events("probe_result", { probe = "well-liveness",
      status = "failure" }), log)
    term_clean(h)
  end)

  it("restartPolicy Never: a container killed by its liveness probe is "
    .. "not started again; the pod fails and its sidecar is stopped",
    function()
    local h = pod(manifest [[
apiVersion: v1
kind: Pod
metadata: { name: once }
spec:
  restartPolicy: Never
  initContainers:
  - name: proxy
    restartPolicy: Always
    command: ["sleep", "602"]
  containers:
  - name: sick
    command: ["sleep", "603"]
    livenessProbe:
      exec: { command: ["false"] }
      periodSeconds: 1
      failureThreshold: 1
]])
    await(h, has("service_stop", { service = "proxy" }), "the sidecar's stop")
    local failed = h:events("pod_phase", { phase = "Failed" })
    assert.are.equal(1, #failed, h:stderr())
    assert.are.same({ "container_failed", "sick" }, { failed[1].reason,
      failed[1].container })
    local log = term_clean(h)
    assert.are.equal(1, #h:events("service_start", { service = "sick" }), log)
    assert.are.equal(0, #h:events("service_restart"), log)
  end)

  it("restartPolicy OnFailure: once every app container exited 0 the pod "
    .. "succeeded and its sidecar is stopped; the host keeps serving",
    function()
    local h = pod(manifest [[
apiVersion: v1
kind: Pod
metadata: { name: job }
spec:
  restartPolicy: OnFailure
  initContainers:
  - name: proxy
    restartPolicy: Always
    command: ["sleep", "604"]
  containers:
  - name: work
    command: ["sh", "-c", "echo work >> @W@/order"]
  - name: more
    command: ["sh", "-c", "sleep 0.3; echo more >> @W@/order"]
]], { "--listen", "127.0.0.1:0" })
    local port = helpers.listen_port(h)
    await(h, has("service_stop", { service = "proxy" }), "the sidecar's stop")
    local evs = h:events()
    local done = index_of(evs, "pod_phase", { phase = "Succeeded" })
    assert.is_truthy(done, h:stderr())
    assert.is_true(done > index_of(evs, "service_exit", { service = "more" }))
    assert.is_true(h:alive())
    local r = helpers.fetch(port, "/readyz")
    assert.are.equal(503, r.http_status)
    assert.is_truthy(r.body:find("pod job: Succeeded", 1, true), r.body)
    term_clean(h)
  end)

  ---------------------------------------------------------------------------
  describe("--container NAME", function()
    local FOUR = [[
apiVersion: v1
kind: Pod
metadata: { name: four }
spec:
  initContainers:
  - name: setup
    command: ["sh", "-c", "echo setup >> @W@/order"]
  - name: proxy
    restartPolicy: Always
    command: ["sh", "-c", "echo proxy >> @W@/order; exec sleep 605"]
  containers:
  - name: a
    command: ["sh", "-c", "echo a >> @W@/order; exec sleep 606"]
  - name: b
    command: ["sh", "-c", "echo b >> @W@/order; exec sleep 607"]
    readinessProbe:
      exec: { command: ["true"] }
      periodSeconds: 1
]]

    it("runs that container, after the pod's init containers and "
      .. "sidecars", function()
      local h = pod(manifest(FOUR), { "--container", "b" })
      await(h, has("probe_result", { probe = "b-readiness",
        status = "success" }), "b's readiness")
      local lines = order()
      table.sort(lines)
      assert.are.same({ "b", "proxy", "setup" }, lines)
      local log = h:stderr()
      local evs = h:events()
      assert.is_true(index_of(evs, "service_exit", { service = "setup" })
        < index_of(evs, "service_start", { service = "proxy" }), log)
      assert.is_true(index_of(evs, "service_start", { service = "proxy" })
        < index_of(evs, "service_start", { service = "b" }), log)
      assert.are.equal(0, #h:events("service_start", { service = "a" }), log)
      assert.are.equal(3, h:events("host_start")[1].services, log)
      term_clean(h)
    end)

    it("naming an init container or a sidecar is an error that says so",
      function()
      local path = manifest(FOUR)
      for _, name in ipairs { "proxy", "setup" } do
        local rc, _, err = helpers.host_run({ "pod", "--container", name,
          path }, nil, 15)
        assert.are.equal(2, rc, err)
        assert.is_truthy(err:find('no container named "' .. name
          .. '" (containers: a, b)', 1, true), err)
        assert.is_truthy(err:find("is an init container", 1, true), err)
      end
      assert.is_nil(read_file(wdir .. "/order"))
    end)
  end)

  ---------------------------------------------------------------------------
  it("/readyz answers for the pod and /readyz?container=NAME for each "
    .. "container; /status shows each with its kind", function()
    local h = pod(manifest [[
apiVersion: v1
kind: Pod
metadata: { name: web }
spec:
  initContainers:
  - name: setup
    command: ["sh", "-c", "while [ ! -e @W@/go ]; do sleep 0.05; done"]
  - name: proxy
    restartPolicy: Always
    command: ["sleep", "608"]
    readinessProbe:
      exec: { command: ["true"] }
      periodSeconds: 1
  containers:
  - name: app
    command: ["sleep", "609"]
    readinessProbe:
      exec: { command: ["test", "-e", "@W@/ready"] }
      periodSeconds: 1
  - name: plain
    command: ["sleep", "610"]
]], { "--listen", "127.0.0.1:0" })
    local port = helpers.listen_port(h)
    local function get(path) return helpers.fetch(port, path) end
    await(h, has("service_start", { service = "setup" }), "setup's start")
    -- initializing: the pod and its containers are not ready
    local r = get("/readyz")
    assert.are.equal(503, r.http_status)
    assert.is_truthy(r.body:find("pod web: initializing (init container "
      .. "setup)", 1, true), r.body)
    assert.is_truthy(r.body:find("container app: not running (waiting, "
      .. "PodInitializing)", 1, true), r.body)
    r = get("/readyz?container=setup")
    assert.are.same({ 503, "init container not completed (running)" },
      { r.http_status, (r.body:gsub("%s+$", "")) })
    assert.are.equal(503, get("/readyz?container=app").http_status)
    assert.are.equal(404, get("/readyz?container=nope").http_status)
    local st = helpers.json_decode(get("/status").body)
    assert.are.same({ "Pending", false }, { st.pods.web.phase,
      st.pods.web.ready })
    assert.are.same({ "app", "waiting", "PodInitializing", false, false },
      { st.pods.web.containers[3].name, st.pods.web.containers[3].state,
        st.pods.web.containers[3].reason, st.pods.web.containers[3].ready,
        st.pods.web.containers[3].started })
    assert.are.same({ "init", "web" }, { st.services.setup.kind,
      st.services.setup.pod })

    helpers.write(wdir .. "/go", "")
    await(h, has("state_change", { probe = "proxy-readiness",
      to = "success" }), "the sidecar's readiness")
    await(h, has("service_start", { service = "plain" }), "the app start")
    -- running, but app's readiness probe fails: only app is not ready
    r = get("/readyz")
    assert.are.equal(503, r.http_status)
    local lines = helpers.lines(r.body)
    assert.are.same({ "not ready:", "container app: readiness probe "
      .. "app-readiness failure" }, lines)
    assert.are.equal(200, get("/readyz?container=setup").http_status)
    assert.are.equal(200, get("/readyz?container=proxy").http_status)
    assert.are.equal(200, get("/readyz?container=plain").http_status)
    r = get("/readyz?container=app")
    assert.are.same({ 503, "readiness probe app-readiness failure\n" },
      { r.http_status, r.body })

    helpers.write(wdir .. "/ready", "")
    await(h, has("state_change", { probe = "app-readiness", to = "success" }),
      "app's readiness")
    assert.are.equal(200, get("/readyz").http_status)
    assert.are.equal(200, get("/readyz?container=app").http_status)
    st = helpers.json_decode(get("/status").body)
    local p = st.pods.web
    assert.are.same({ "Running", true, true, "Always" }, { p.phase, p.ready,
      p.initialized, p.restart_policy })
    local seen = {}
    for i, c in ipairs(p.containers) do
      seen[i] = table.concat({ c.name, c.kind, c.state, tostring(c.ready),
        string.format("%d", c.restarts) }, " ")
    end
    assert.are.same({ "setup init terminated true 0",
      "proxy sidecar running true 0", "app app running true 0",
      "plain app running true 0" }, seen)
    assert.are.equal("sidecar", st.services.proxy.kind)
    assert.are.equal("app", st.services.plain.kind)
    term_clean(h)
  end)

  ---------------------------------------------------------------------------
  it("what sonde cannot do is warned once at load, naming the pod, the "
    .. "container and the field, not at each restart", function()
    local h = pod(manifest [[
apiVersion: v1
kind: Pod
metadata: { name: partial }
spec:
  volumes:
  - name: data
    emptyDir: {}
  nodeSelector: { disk: ssd }
  containers:
  - name: app
    image: busybox
    command: ["sh", "-c"]
    args:
    - 'echo "PLAIN=$PLAIN SECRET=${SECRET-unset}"; sleep 0.2; exit 1'
    env:
    - name: PLAIN
      value: "1"
    - name: SECRET
      valueFrom:
        secretKeyRef: { name: db, key: password }
    envFrom:
    - configMapRef: { name: settings }
    volumeMounts:
    - name: data
      mountPath: /data
    lifecycle:
      preStop:
        exec: { command: ["true"] }
]])
    await(h, has("service_start", { service = "app", instance = 3 }),
      "two restarts of the app")
    local log = h:stderr()
    local warned = h:events("pod_unsupported")
    local by = {}
    for _, e in ipairs(warned) do
      assert.are.equal("warn", e.level, log)
      assert.are.equal("partial", e.pod, log)
      local key = (e.container or "-") .. " " .. e.field
      assert.is_nil(by[key], "warned twice: " .. key .. "\n" .. log)
      by[key] = e.detail
    end
    local keys = {}
    for k in pairs(by) do keys[#keys + 1] = k end
    table.sort(keys)
    assert.are.same({ "- volumes", "app envFrom", "app env[1].valueFrom",
      "app lifecycle.preStop", "app volumeMounts" }, keys)
    assert.is_truthy(by["app env[1].valueFrom"]:find("SECRET is not set",
      1, true))
    assert.is_truthy(by["app volumeMounts"]:find("/data", 1, true))
    -- the rest runs: the literal value is set, the other is not
    local out = h:events("service_output", { service = "app" })
    assert.are.equal("PLAIN=1 SECRET=unset", out[1].line, log)
    -- runtime-only fields: listed at info, once
    local ign = h:events("pod_ignored")
    assert.are.equal(2, #ign, log)
    for _, e in ipairs(ign) do
      assert.are.equal("info", e.level)
      if e.container then
        assert.are.same({ "app", "image" }, { e.container, e.fields })
      else
        assert.are.equal("nodeSelector", e.fields)
      end
    end
    term_clean(h)
  end)

  ---------------------------------------------------------------------------
  it("examples/pod-sidecar.yaml runs as its header says", function()
    local text = assert(read_file("examples/pod-sidecar.yaml"))
    local port = helpers.closed_port()
    local n
    text, n = text:gsub("/tmp/sonde%-pod%-demo", wdir)
    assert.is_true(n >= 5, n)
    text, n = text:gsub("8080", tostring(port))
    assert.are.equal(4, n)        -- the header's, web's command, port, visitor
    local h = pod(manifest(text), { "--listen", "127.0.0.1:0" })
    local lport = helpers.listen_port(h)
    await(h, function(x)
      for _, e in ipairs(x:events("service_output",
          { service = "log-shipper" })) do
        if e.line:find("GET / %d+ bytes") then return true end
      end
    end, "the sidecar's shipping of a visit")
    await(h, function()
      return helpers.fetch(lport, "/readyz").http_status == 200
    end, "/readyz 200")
    assert.are.equal(200, helpers.fetch(lport, "/readyz?container=web")
      .http_status)
    local evs = h:events()
    local order_of = {}
    for _, name in ipairs { "setup", "log-shipper", "web", "visitor" } do
      order_of[name] = index_of(evs, "service_start", { service = name })
    end
    assert.is_true(index_of(evs, "service_exit", { service = "setup" })
      < order_of["log-shipper"], h:stderr())
    local up = index_of(evs, "state_change", { probe = "log-shipper-startup",
      to = "success" })
    assert.is_true(up < order_of.web and up < order_of.visitor, h:stderr())
    local log = term_clean(h)
    evs = h:events()
    local shipper = index_of(evs, "service_stop", { service = "log-shipper" })
    assert.is_true(index_of(evs, "service_stop", { service = "web" }) < shipper,
      log)
    assert.is_true(index_of(evs, "service_stop", { service = "visitor" })
      < shipper, log)
    assert.are.equal(0, #h:events("service_restart"), log)
  end)

  ---------------------------------------------------------------------------
  it("SIGHUP keeps a pod whose manifest did not change, and replaces one "
    .. "whose manifest changed: the old stops, then the new starts from its "
    .. "init containers", function()
    local text = [[
apiVersion: v1
kind: Pod
metadata: { name: reloaded }
spec:
  terminationGracePeriodSeconds: 5
  initContainers:
  - name: setup
    command: ["sh", "-c", "echo setup-VERSION >> @W@/order"]
  containers:
  - name: app
    command: ["sh", "-c"]
    args:
    - |
      trap 'echo app-VERSION-term >> @W@/order; exit 0' TERM
      echo app-VERSION >> @W@/order
      while :; do sleep 0.05; done
]]
    local path = manifest((text:gsub("VERSION", "1")))
    local h = pod(path)
    await(h, function() return #order() >= 2 end, "the pod's start")
    h:signal("HUP")
    await(h, has("reload", { status = "ok" }), "the first reload")
    assert.are.same({ "setup-1", "app-1" }, order())
    assert.are.equal(0, #h:events("pod_stop"), h:stderr())
    helpers.replace(path, (text:gsub("@W@", wdir):gsub("VERSION", "2")))
    h:signal("HUP")
    await(h, function() return #order() >= 5 end, "the new pod's start")
    assert.are.same({ "setup-1", "app-1", "app-1-term", "setup-2", "app-2" },
      order())
    assert.are.equal(1, #h:events("pod_stop", { pod = "reloaded" }))
    term_clean(h)
    assert.are.equal("app-2-term", order()[6])
  end)
end)
