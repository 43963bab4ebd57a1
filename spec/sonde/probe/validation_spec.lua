-- The validation messages of sonde.probe: every error names the probe and
-- the field, at the caller's location.
local sonde = require "sonde"
local helpers = require "helpers"

local function probe_err(spec)
  return helpers.error_here(function() sonde.probe(spec) end)
end

describe("sonde.probe validation messages", function()
  before_each(helpers.fresh)
  after_each(helpers.fresh)

  local ok_exec = { command = { "true" } }

  it("http_get.port 0", function()
    assert.are.equal('probe "web": http_get.port: must be 1..65535, got 0',
      probe_err { name = "web", http_get = { port = 0 } })
  end)

  it("a missing handler", function()
    assert.are.equal('probe "nh": must specify a handler type (exec, '
      .. 'http_get, tcp_socket, grpc, icmp, dns or check)', probe_err { name = "nh",
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
