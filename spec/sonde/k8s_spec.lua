-- sonde.k8s.probe: Kubernetes field names -> sonde.probe specs, with the
-- Kubernetes defaults; every error names the probe and the field, at the
-- caller's location.
local sonde = require "sonde"
local helpers = require "helpers"

local function k8s_err(t)
  return helpers.error_here(function() sonde.k8s.probe(t) end)
end

describe("sonde.k8s.probe", function()
  before_each(helpers.fresh)
  after_each(helpers.fresh)

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
    assert.are.same({ 3, 5, 1, "http_get" },
      { p.initial_delay, p.period, p.timeout, p.handler })
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
    assert.are.same({ 7, 30 }, { p.termination_grace, p.failure_threshold })
  end)

  it("translates grpc: port and service (default \"\")", function()
    local spec = sonde.k8s.probe { name = "g", grpc = { port = 9000 },
      periodSeconds = 3 }
    assert.are.same({ name = "g", grpc = { port = 9000 }, initial_delay = 0,
      period = 3, timeout = 1, success_threshold = 1, failure_threshold = 3 },
      spec)
    local p = sonde.probe(spec)
    assert.are.same({ "grpc", "127.0.0.1", 9000, "" },
      { p.handler, p.opts.host, p.opts.port, p.opts.service })
    assert.is_nil(p.opts.tls)           -- plaintext, as the kubelet
    local named = sonde.probe(sonde.k8s.probe { name = "g2",
      grpc = { port = 9001, service = "db" } })
    assert.are.same({ 9001, "db" }, { named.opts.port, named.opts.service })
  end)

  it("grpc: a named port, a missing port, an unknown field are refused",
    function()
    local ports = { { name = "grpc", port = 9000 } }
    assert.is_truthy(helpers.error_here(function()
      sonde.probe(sonde.k8s.probe { name = "g", ports = ports,
        grpc = { port = "grpc" } })
    end):find('probe "g": grpc.port: must be a port number 1..65535 (a gRPC '
      .. 'probe takes no named port), got "grpc"', 1, true))
    assert.is_truthy(helpers.error_here(function()
      sonde.probe(sonde.k8s.probe { name = "g", grpc = { service = "x" } })
    end):find('probe "g": grpc.port: is required', 1, true))
    assert.are.equal('probe "g": grpc: unknown field "host"',
      k8s_err { name = "g", grpc = { port = 1, host = "::1" } })
    assert.are.equal('probe "g": may not specify more than 1 handler type',
      k8s_err { name = "g", grpc = { port = 1 }, tcpSocket = { port = 1 } })
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
      .. 'probes, got 2', helpers.error_here(function()
        sonde.probe(sonde.k8s.probe { name = "l", kind = "liveness",
          exec = { command = { "true" } }, successThreshold = 2 })
      end))
  end)
end)
