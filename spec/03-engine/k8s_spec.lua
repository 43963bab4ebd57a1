-- sonde.k8s.probe (Kubernetes field names -> sonde.probe specs, with the
-- Kubernetes defaults) and the validation messages of sonde.probe: every
-- error names the probe and the field, at the caller's location.
local sonde = require "sonde"
local E = require "engine_helpers"

-- The error of fn() without its location prefix; asserts that the prefix
-- is this file (the user's call site).
local function err_of(fn)
  local ok, err = pcall(fn)
  assert.is_false(ok, "no error raised")
  err = tostring(err)
  local where, msg = err:match("^([^\n]-:%d+): (.*)$")
  assert.is_truthy(where, "no location prefix: " .. err)
  assert.is_truthy(where:find("k8s_spec.lua", 1, true),
    "location is not the caller's: " .. err)
  return msg
end

local function probe_err(spec)
  return err_of(function() sonde.probe(spec) end)
end

local function k8s_err(t)
  return err_of(function() sonde.k8s.probe(t) end)
end

describe("sonde.k8s.probe", function()
  before_each(function() E.fresh() end)
  after_each(function() E.fresh() end)

  it("translates httpGet with headers and the Kubernetes defaults", function()
    local spec = sonde.k8s.probe {
      name = "web-live", kind = "liveness",
      httpGet = { path = "/healthz", port = 8080,
                  httpHeaders = { { name = "X-Probe", value = "1" } } },
      initialDelaySeconds = 3, periodSeconds = 5,
    }
    assert.are.same({
      name = "web-live", kind = "liveness",
      http_get = { path = "/healthz", port = 8080, scheme = "HTTP",
                   headers = { { name = "X-Probe", value = "1" } } },
      initial_delay = 3, period = 5, timeout = 1, success_threshold = 1,
      failure_threshold = 3,
    }, spec)
    local p = sonde.probe(spec)
    assert.are.equal(3, p.initial_delay)
    assert.are.equal(5, p.period)
    assert.are.equal(1, p.timeout)
    assert.are.equal("http_get", p.handler)
    assert.are.equal("http://127.0.0.1:8080/healthz", p.opts.url)
  end)

  it("0 means the default: period 10, timeout 1, success 1, failure 3, "
    .. "path /", function()
    local spec = sonde.k8s.probe {
      name = "zeros", exec = { command = { "true" } },
      initialDelaySeconds = 0, periodSeconds = 0, timeoutSeconds = 0,
      successThreshold = 0, failureThreshold = 0,
    }
    assert.are.same({ name = "zeros", exec = { command = { "true" } },
      initial_delay = 0, period = 10, timeout = 1, success_threshold = 1,
      failure_threshold = 3 }, spec)
    local absent = sonde.k8s.probe { name = "absent",
      httpGet = { port = 80, path = "" } }
    assert.are.same({ name = "absent", http_get = { path = "/", port = 80,
      scheme = "HTTP" }, initial_delay = 0, period = 10, timeout = 1,
      success_threshold = 1, failure_threshold = 3 }, absent)
    local nopath = sonde.k8s.probe { name = "nopath",
      httpGet = { port = 80 } }
    assert.are.equal("/", nopath.http_get.path)
  end)

  it("translates tcpSocket, named ports and sonde's own fields", function()
    local svc = sonde.service { name = "db", command = { "sleep", "1" } }
    local f = function() end
    local spec = sonde.k8s.probe {
      name = "db-tcp", kind = "startup", service = svc,
      ports = { { name = "pg", port = 5432 } },
      tcpSocket = { port = "pg", host = "::1" },
      periodSeconds = 2, failureThreshold = 30, on_change = f,
      terminationGracePeriodSeconds = 7,
    }
    assert.are.same({ name = "db-tcp", kind = "startup", service = svc,
      ports = { { name = "pg", port = 5432 } },
      tcp_socket = { port = "pg", host = "::1" }, on_change = f,
      initial_delay = 0, period = 2, timeout = 1, success_threshold = 1,
      failure_threshold = 30, termination_grace = 7 }, spec)
    local p = sonde.probe(spec)
    assert.are.equal(5432, p.opts.port)
    assert.are.equal("::1", p.opts.host)
    assert.are.equal(7, p.termination_grace)
    assert.are.equal(30, p.failure_threshold)
  end)

  it("rejects grpc", function()
    assert.are.equal('probe "g": grpc: gRPC probes are not supported yet',
      k8s_err { name = "g", grpc = { port = 9000 } })
  end)

  it("rejects an unknown field, naming it", function()
    assert.are.equal('probe "u": unknown field "periodSecond"',
      k8s_err { name = "u", exec = { command = { "true" } },
                periodSecond = 5 })
    assert.are.equal('probe "u": httpGet: unknown field "pat"',
      k8s_err { name = "u", httpGet = { port = 80, pat = "/x" } })
  end)

  it("rejects no handler and two handlers", function()
    assert.are.equal('probe "n": must specify a handler type',
      k8s_err { name = "n", periodSeconds = 5 })
    assert.are.equal('probe "n": may not specify more than 1 handler type',
      k8s_err { name = "n", exec = { command = { "true" } },
                tcpSocket = { port = 80 } })
  end)

  it("rejects negative and fractional numbers", function()
    assert.are.equal('probe "neg": periodSeconds: must be >= 0, got -1',
      k8s_err { name = "neg", exec = { command = { "true" } },
                periodSeconds = -1 })
    assert.are.equal('probe "neg": failureThreshold: must be >= 0, got -3',
      k8s_err { name = "neg", exec = { command = { "true" } },
                failureThreshold = -3 })
    assert.are.equal('probe "frac": timeoutSeconds: must be an integer, '
      .. 'got 1.5', k8s_err { name = "frac", exec = { command = { "true" } },
                              timeoutSeconds = 1.5 })
  end)

  it("terminationGracePeriodSeconds: > 0, and not on readiness probes",
    function()
    assert.are.equal('probe "r": terminationGracePeriodSeconds: must not be '
      .. 'set for readiness probes', k8s_err { name = "r", kind = "readiness",
        exec = { command = { "true" } }, terminationGracePeriodSeconds = 5 })
    assert.are.equal('probe "z": terminationGracePeriodSeconds: must be '
      .. 'greater than 0, got 0', k8s_err { name = "z", kind = "liveness",
        exec = { command = { "true" } }, terminationGracePeriodSeconds = 0 })
  end)

  it("terminationGracePeriodSeconds on a probe that is readiness by default "
    .. "(no kind, no service) is rejected", function()
    -- without kind and service, sonde.probe makes a readiness probe
    local ok, err = pcall(function()
      sonde.probe(sonde.k8s.probe { name = "implicit",
        exec = { command = { "true" } }, terminationGracePeriodSeconds = 5 })
    end)
    local declared = require("sonde.config").ambient().probe_by_name.implicit
    assert.is_false(ok, "accepted, as a " .. tostring(declared
      and declared.kind) .. " probe with termination_grace "
      .. tostring(declared and declared.termination_grace))
    assert.is_truthy(tostring(err):find('probe "implicit": '
      .. 'terminationGracePeriodSeconds: must not be set for readiness probes',
      1, true) or tostring(err):find('probe "implicit": termination_grace:',
      1, true), tostring(err))
  end)

  it("successThreshold 2 on liveness is rejected by sonde.probe", function()
    assert.are.equal('probe "l": success_threshold: must be 1 for liveness '
      .. 'probes, got 2', err_of(function()
        sonde.probe(sonde.k8s.probe { name = "l", kind = "liveness",
          exec = { command = { "true" } }, successThreshold = 2 })
      end))
  end)
end)

describe("sonde.probe validation messages", function()
  before_each(function() E.fresh() end)
  after_each(function() E.fresh() end)

  local ok_exec = { command = { "true" } }

  it("http_get.port 0", function()
    assert.are.equal('probe "web": http_get.port: must be 1..65535, got 0',
      probe_err { name = "web", http_get = { port = 0 } })
  end)

  it("a missing handler", function()
    assert.are.equal('probe "nh": must specify a handler type (exec, '
      .. 'http_get, tcp_socket or check)', probe_err { name = "nh",
        period = 5 })
  end)

  it("two handlers", function()
    assert.are.equal('probe "two": tcp_socket: may not specify more than 1 '
      .. 'handler type (exec given too)', probe_err { name = "two",
        exec = ok_exec, tcp_socket = { port = 80 } })
  end)

  it("success_threshold 2 on liveness and startup", function()
    assert.are.equal('probe "l2": success_threshold: must be 1 for liveness '
      .. 'probes, got 2', probe_err { name = "l2", kind = "liveness",
        exec = ok_exec, success_threshold = 2 })
    assert.are.equal('probe "s2": success_threshold: must be 1 for startup '
      .. 'probes, got 2', probe_err { name = "s2", kind = "startup",
        exec = ok_exec, success_threshold = 2 })
    -- readiness may
    assert.are.equal(2, sonde.probe { name = "r2", kind = "readiness",
      exec = ok_exec, success_threshold = 2 }.success_threshold)
  end)

  it("negative and zero numbers", function()
    assert.are.equal('probe "n": period: must be > 0, got -1',
      probe_err { name = "n", exec = ok_exec, period = -1 })
    assert.are.equal('probe "n": timeout: must be > 0, got 0',
      probe_err { name = "n", exec = ok_exec, timeout = 0 })
    assert.are.equal('probe "n": initial_delay: must be >= 0, got -1',
      probe_err { name = "n", exec = ok_exec, initial_delay = -1 })
    assert.are.equal('probe "n": failure_threshold: must be >= 1, got 0',
      probe_err { name = "n", exec = ok_exec, failure_threshold = 0 })
    assert.are.equal('probe "n": action_interval: must be >= 0, got -5',
      probe_err { name = "n", exec = ok_exec, action_interval = -5 })
  end)

  it("a negative threshold names the real minimum (1)", function()
    assert.are.equal('probe "n": failure_threshold: must be >= 1, got -1',
      probe_err { name = "n", exec = ok_exec, failure_threshold = -1 })
    assert.are.equal('probe "n": success_threshold: must be >= 1, got -2',
      probe_err { name = "n", exec = ok_exec, success_threshold = -2 })
  end)

  it("unknown keys", function()
    assert.are.equal('probe "k": unknown field "periodSeconds"',
      probe_err { name = "k", exec = ok_exec, periodSeconds = 5 })
    assert.are.equal('probe "k": exec: unknown field "cmd"',
      probe_err { name = "k", exec = { cmd = { "true" } } })
  end)

  it("period 0.05 is rejected, 0.1 accepted", function()
    assert.are.equal('probe "p": period: must be >= 0.1, got 0.05',
      probe_err { name = "p", exec = ok_exec, period = 0.05 })
    assert.are.equal(0.1, sonde.probe { name = "p", exec = ok_exec,
      period = 0.1 }.period)
  end)

  it("the handler's own timeout, a bad kind, a missing name, a duplicate",
    function()
    assert.are.equal('probe "t": exec.timeout: is set on the probe (timeout)',
      probe_err { name = "t", exec = { command = { "true" }, timeout = 2 } })
    assert.are.equal('probe "b": kind: must be liveness, readiness or '
      .. 'startup, got "alive"', probe_err { name = "b", kind = "alive",
        exec = ok_exec })
    assert.are.equal('sonde.probe: name: must be a non-empty string',
      probe_err { exec = ok_exec })
    sonde.probe { name = "dup", exec = ok_exec }
    assert.are.equal('probe "dup": name: declared twice',
      probe_err { name = "dup", exec = ok_exec })
  end)

  it("the defaults (kubelet): readiness without a service, liveness with one",
    function()
    local p = sonde.probe { name = "d", exec = ok_exec }
    assert.are.same({ "readiness", 0, 10, 1, 1, 3, "failure" },
      { p.kind, p.initial_delay, p.period, p.timeout, p.success_threshold,
        p.failure_threshold, p.state })
    local svc = sonde.service { name = "s", command = { "sleep", "1" } }
    local l = sonde.probe { name = "l", exec = ok_exec, service = svc }
    assert.are.same({ "liveness", "success" }, { l.kind, l.state })
    local st = sonde.probe { name = "st", kind = "startup", exec = ok_exec,
      service = svc }
    assert.are.equal("unknown", st.state)
  end)
end)
