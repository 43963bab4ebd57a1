-- What every host command shares (sonde.host.common): a spec error in the
-- script names the script's own file and line, wherever it lives, in
-- `check`, `once` and a run, never a line inside sonde's own files; and a
-- Kubernetes manifest is accepted wherever a script is.
local helpers = require "helpers"

describe("host commands", function()
  local dir

  before_each(function()
    dir = helpers.tmpdir()
    -- where the shipped unit puts scripts: a path with /sonde/ in it
    assert(os.execute("mkdir -p " .. helpers.q(dir .. "/etc/sonde")))
  end)
  after_each(function() helpers.rmtree(dir) end)

  local CASES = {
    { "a handler field", [[
local sonde = require "sonde"

sonde.probe { name = "x", http_get = { port = 70000 } }
]], 3, 'probe "x": http_get.port: must be 1..65535, got 70000' },
    { "a name declared twice", [[
local sonde = require "sonde"
sonde.probe { name = "x", tcp_socket = { port = 7 } }
sonde.probe { name = "x", tcp_socket = { port = 7 } }
]], 3, 'probe "x": name: declared twice' },
    { "a service's restart policy", [[
local sonde = require "sonde"
local svc = sonde.service { name = "a", command = { "true" },
  restart = { policy = "sometimes" } }
]], 2, 'service "a": restart.policy: must be always, on-failure or never, '
      .. 'got "sometimes"' },
    { "a service of another kind", [[
local sonde = require "sonde"
sonde.probe { name = "p", service = {}, exec = { command = { "true" } } }
]], 2, 'probe "p": service: must be a sonde.service, got table' },
    { "an action", [[
local sonde = require "sonde"
sonde.probe { name = "p", exec = { command = { "true" } },
  on_failure = sonde.action.webhook { url = "ftp://example" } }
]], 3, 'sonde.action.webhook: url: scheme must be http or https, got "ftp"' },
    { "a Kubernetes probe", [[
local sonde = require "sonde"
sonde.probe(sonde.k8s.probe { name = "k", httpGet = { port = 0 } })
]], 2, 'probe "k": http_get.port: must be 1..65535, got 0' },
    { "a metric", [[
local sonde = require "sonde"
sonde.metrics.gauge("probe_mine", "help")
]], 2, "sonde.metrics.gauge: name: probe_ is reserved for sonde's own series" },
    { "a prober's argument", [[
local sonde = require "sonde"
sonde.sleep(-1)
]], 2, "sonde.sleep: seconds: must be >= 0, got -1" },
  }

  for _, case in ipairs(CASES) do
    local what, text, line, msg = table.unpack(case)
    it(what .. ": FILE:LINE of the script in check, once and a run", function()
      local path = helpers.write(dir .. "/etc/sonde/probes.lua", text)
      local want = string.format("sonde: %s:%d: %s\n", path, line, msg)
      for _, args in ipairs { { "check", path }, { "once", path }, { path } } do
        local rc, out, err = helpers.host_run(args)
        assert.are.equal(2, rc, table.concat(args, " ") .. "\n" .. err)
        assert.are.equal("", out)
        assert.are.equal(want, err, table.concat(args, " "))
      end
    end)
  end

  it("a reload that fails logs the script's file and line", function()
    local path = helpers.write(dir .. "/etc/sonde/probes.lua", [[
local sonde = require "sonde"
sonde.probe { name = "ok", exec = { command = { "true" } }, period = 0.2 }
]])
    local h = helpers.host_start { "--log-format", "json", path }
    assert(h:wait_for(function(x) return #x:events("probe_result") >= 1 end, 10))
    helpers.write(path, [[
local sonde = require "sonde"
sonde.probe { name = "ok", exec = { command = { "true" } }, period = 0.01 }
]])
    h:signal("HUP")
    assert(h:wait_for(function(x) return #x:events("reload") >= 1 end, 10))
    local ev = h:events("reload")[1]
    h:cleanup()
    assert.are.equal("failed", ev.status)
    assert.are.equal(path .. ':2: probe "ok": period: must be >= 0.1, got 0.01',
      ev.error)
  end)

  describe("a Kubernetes manifest", function()
    local manifest = [[
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: app
    image: busybox
    args: ["sleep", "60"]
    readinessProbe:
      exec:
        command: ["true"]
      periodSeconds: 2
  - name: other
    image: busybox
    args: ["sleep", "60"]
]]

    it("sonde check lists it (the pod, every container), by name or by "
      .. "content", function()
      for _, name in ipairs { "pod.yaml", "pod.manifest" } do
        local path = helpers.write(dir .. "/" .. name, manifest)
        local rc, out, err = helpers.host_run { "check", path }
        assert.are.equal(0, rc, err)
        assert.are.equal(path .. ": 2 services, 1 probe\n"
          .. "pod     web                  restartPolicy=Always grace=30s: "
          .. "app app, app other\n"
          .. "service app                  sleep 60\n"
          .. "service other                sleep 60\n"
          .. "probe   app-readiness        readiness exec       period=2s "
          .. "timeout=1s initial_delay=0s success_threshold=1 "
          .. "failure_threshold=3 service=app\n", out)
      end
    end)

    it("sonde check --container picks one, and names a missing one", function()
      local path = helpers.write(dir .. "/pod.yaml", manifest)
      local rc, out = helpers.host_run { "check", "--container", "other", path }
      assert.are.equal(0, rc)
      assert.are.equal(path .. ": 1 service, 0 probes\n"
        .. "pod     web                  restartPolicy=Always grace=30s: "
        .. "app other\n"
        .. "service other                sleep 60\n", out)
      local rc2, _, err = helpers.host_run { "check", "--container", "nope", path }
      assert.are.equal(2, rc2)
      assert.is_truthy(err:find(path .. ': no container named "nope" '
        .. "(containers: app, other)", 1, true), err)
    end)

    it("sonde once runs its probes", function()
      local path = helpers.write(dir .. "/pod.yaml", manifest)
      local rc, out, err = helpers.host_run { "once", "--format", "json", path }
      assert.are.equal(0, rc, err)
      local r = assert(helpers.json_decode(out))
      assert.are.same({ "app-readiness", "success" }, { r.probe, r.status })
    end)

    it("a broken manifest is an error naming the file, not a Lua parse error",
      function()
      local path = helpers.write(dir .. "/bad.yaml", "kind: Pod\nspec: [1, 2\n")
      local rc, _, err = helpers.host_run { "check", path }
      assert.are.equal(2, rc)
      assert.is_truthy(err:find("^sonde: " .. path:gsub("%p", "%%%0")
        .. ": not valid YAML or JSON"), err)
    end)
  end)

  it("sonde.k8s.load of a missing manifest: the script's line, the path once",
    function()
    local path = helpers.write(dir .. "/etc/sonde/pod.lua",
      'local sonde = require "sonde"\n\nsonde.k8s.load("' .. dir
      .. '/nowhere.yaml")\n')
    local rc, _, err = helpers.host_run { "check", path }
    assert.are.equal(2, rc)
    assert.are.equal(string.format("sonde: %s:3: %s/nowhere.yaml: No such "
      .. "file or directory\n", path, dir), err)
  end)

  it("a manifest that starts with a byte-order mark is a manifest", function()
    local path = helpers.write(dir .. "/pod.txt", "\239\187\191apiVersion: v1\n"
      .. "kind: Pod\nmetadata:\n  name: b\nspec:\n  containers:\n"
      .. "  - name: app\n    args: [\"sleep\", \"1\"]\n")
    local rc, out, err = helpers.host_run { "check", path }
    assert.are.equal(0, rc, err)
    assert.are.equal(path .. ": 1 service, 0 probes", helpers.lines(out)[1])
  end)
end)
