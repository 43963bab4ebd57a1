-- The project's OTLP/HTTP JSON receiver for the specs
-- (spec/fixtures/otlp-sink.py, run by Debian's /usr/bin/python3; see its
-- docstring for what it checks and how it is told to answer; it also
-- parses each request with protobuf's proto3 JSON parser into the
-- ExportMetricsServiceRequest of spec/fixtures/otlp-proto):
--
--   local sinks = require "support.otlp_sink"
--   local s = sinks.start()          -- or sinks.start { port = P }
--   s.port, s.pid, s:url()           -- http://127.0.0.1:P/v1/metrics
--   s:control("answers=503,503")     -- GET /control?...
--   s:requests()                     -- every POST recorded (decoded)
--   s:hanging()                      -- requests held now
--   s:stop()                         -- SIGTERM, SIGKILL after 3 s
--   sinks.stop_all()
--
-- Its control requests go through curl (outside the loop of the busted
-- process, which may run an exporter).
local H = require "helpers"

local M = {}
local Sink = {}
Sink.__index = Sink
local started = {}
local stubs

local function curl(url)
  local rc, out = H.sh("env -u LD_PRELOAD curl -sS --max-time 10 " .. H.q(url))
  assert(rc == 0, "curl " .. url .. ": " .. out)
  return out
end

function M.start(opts)
  opts = opts or {}
  local out = os.tmpname()
  -- (its protobuf stubs: made once per busted run)
  stubs = stubs or (H.scratch() .. "/otlp-stubs")
  local argv = { "/usr/bin/python3", H.q(H.root .. "/spec/fixtures/otlp-sink.py"),
    "--proto", H.q(H.root .. "/spec/fixtures/otlp-proto"), "--stubs", H.q(stubs) }
  if opts.port then argv[#argv + 1] = "--port " .. opts.port end
  local pid, text = H.spawn_ready(table.concat(argv, " "), out, "^PORT ", 20)
  local s = setmetatable({ out = out, pid = pid,
    port = tonumber(text:match("\nPORT (%d+)")) }, Sink)
  started[#started + 1] = s
  if not s.port then
    s:stop()
    error("otlp-sink did not print a PORT line within 20 s: " .. text, 2)
  end
  return s
end

function Sink:url(path)
  return string.format("http://127.0.0.1:%d%s", self.port, path or "/v1/metrics")
end

function Sink:control(query)
  return curl(self:url("/control?" .. query))
end

function Sink:requests()
  return assert(H.json_decode(curl(self:url("/requests"))))
end

function Sink:hanging()
  return tonumber(curl(self:url("/hanging")))
end

function Sink:stop()
  if self.pid and not self.stopped then
    self.stopped = true
    H.terminate(self.pid)
  end
  os.remove(self.out)
end

function M.stop_all()
  for _, s in ipairs(started) do s:stop() end
  started = {}
end

return M
