--- The `sonde` host's command line (called by src/host/main.c).
--
--   sonde [OPTIONS] SCRIPT [ARGS...]      run (sonde.host.run)
--   sonde [OPTIONS] pod [--container NAME] MANIFEST
--                                         run a Kubernetes manifest's pod
--   sonde check [--container NAME] SCRIPT|MANIFEST      (sonde.host.check)
--   sonde once [--format text|json] [--container NAME] SCRIPT|MANIFEST [NAME...]
--                                                       (sonde.host.once)
--   sonde --version | --help
--
-- OPTIONS: `--log-format text|json`, `--log-level debug|info|warn|error`
-- (default info), `--listen ADDR` ("PORT" or ":PORT" = 127.0.0.1 only,
-- "HOST:PORT", "[V6]:PORT"), `--shard I/N` (sonde.probe_each keeps the
-- targets of shard I of N, 0 <= I < N, as Prometheus's hashmod of
-- `__address__`: see sonde.targets), `--otlp URL` with `--otlp-interval
-- SECONDS` (15), `--otlp-header "Name: value"` and `--otlp-resource
-- name=value` (push the /metrics series as OTLP/HTTP JSON: sonde.otlp).
-- A manifest is a file named *.yaml, *.yml or *.json, or one that is not
-- Lua and starts like one.
--
-- Exit codes: 0 fine, 1 failure (once) or a runtime error, 2 usage or
-- script error, 3 unknown (once).
-- @module sonde.host
local core = require "sonde.core"
local log = require "sonde.log"
local common = require "sonde.host.common"
local run = require "sonde.host.run"
local check = require "sonde.host.check"
local once = require "sonde.host.once"
local targets = require "sonde.targets"
local blackbox = require "sonde.blackbox"

local M = {}

local USAGE = [[
usage: sonde [OPTIONS] SCRIPT [ARGS...]
       sonde [OPTIONS] pod [--container NAME] MANIFEST
       sonde check [--container NAME] SCRIPT|MANIFEST
       sonde once [--format text|json] [--container NAME] SCRIPT|MANIFEST [NAME...]
       sonde --version | --help

  SCRIPT            run the probes and services the Lua script declares,
                    until SIGTERM or SIGINT; SIGHUP reloads the script
  pod MANIFEST      run the pod of a Kubernetes Pod/Deployment manifest
                    (YAML or JSON) as the kubelet does: init containers,
                    sidecars, then every container, with their probes
  check             load and validate only; list probes and services
  once              run each probe (or each NAME) once and print results;
                    exit 0 all succeeded, 1 a failure, 3 unknown only
  --container NAME  of the manifest's containers, only NAME (its init
                    containers and sidecars still run; default: all)
  --format F        once: results as text (default) or json lines

OPTIONS:
  --log-format F    event lines on stderr as text (default) or json
  --log-level L     debug, info (default), warn or error; at info a
                    successful probe run is not logged, at debug it is
  --listen ADDR     serve /metrics, /healthz, /readyz, /status on ADDR
                    (PORT or :PORT = 127.0.0.1 only, HOST:PORT, [V6]:PORT)
  --shard I/N       sonde.probe_each keeps only the targets of shard I
                    (0 <= I < N): Prometheus's hashmod of __address__
  --otlp URL        push the /metrics series as OTLP/HTTP JSON to URL
                    (e.g. http://127.0.0.1:4318/v1/metrics)
  --otlp-interval S seconds between two pushes (default 15)
  --otlp-header H   "Name: value" sent with each push (repeatable)
  --otlp-resource A "name=value": a resource attribute of the pushes
                    (repeatable; e.g. service.instance.id=host-a/shard-1)
  --config.file F   a blackbox_exporter configuration (blackbox.yml): serve
                    /probe?target=T&module=M[&debug=true] (with --listen or
                    its alias --web.listen-address); SCRIPT is then optional
  --timeout-offset S  seconds taken off the scrape's timeout header (0.5)
  --config.check    check the --config.file and exit (0 ok, 1 not)
]]

-- "9100", ":9100" -> 127.0.0.1; "0.0.0.0:9100"; "[::1]:9100"
local function parse_listen(a)
  local host, port = a:match("^%[([%x:%.]+)%]:(%d+)$")
  if not host then host, port = a:match("^([^:]*):(%d+)$") end
  if not host then port = a:match("^(%d+)$") end
  port = tonumber(port)
  if not port or port > 65535 then return nil end
  if not host or host == "" then host = "127.0.0.1" end
  return host, port
end

local LEVELS = { debug = true, info = true, warn = true, error = true }

-- Options and where they go: before the command ("global"), or after
-- the command named.
local OPTIONS = {
  ["--log-format"] = { global = true, pod = true, check = true, once = true },
  ["--log-level"] = { global = true, pod = true, check = true, once = true },
  ["--listen"] = { global = true, pod = true },
  ["--container"] = { pod = true, check = true, once = true },
  ["--format"] = { once = true },
  ["--shard"] = { global = true, check = true, once = true },
  ["--otlp"] = { global = true, pod = true },
  ["--otlp-interval"] = { global = true, pod = true },
  ["--otlp-header"] = { global = true, pod = true },
  ["--otlp-resource"] = { global = true, pod = true },
  -- blackbox_exporter's flags (sonde.blackbox)
  ["--config.file"] = { global = true },
  ["--web.listen-address"] = { global = true },
  ["--timeout-offset"] = { global = true },
  ["--config.check"] = { global = true },
}

-- Take option `a` with value `v` into `opts`; an error text when wrong.
local function take(opts, cmd, a, v)
  if not OPTIONS[a] then return "unknown option " .. a end
  if not OPTIONS[a][cmd] then
    return cmd == "global" and "unknown option " .. a
      or a .. " is not an option of " .. cmd
  end
  if a == "--log-format" then
    if v ~= "text" and v ~= "json" then return "--log-format takes text or json" end
    log.set_format(v)
  elseif a == "--log-level" then
    if not LEVELS[v] then
      return "--log-level takes debug, info, warn or error"
    end
    log.set_level(v)
  elseif a == "--config.file" then
    if not v or v == "" then return "--config.file takes a path" end
    opts.config_file = v
  elseif a == "--timeout-offset" then
    local n = tonumber(v or "")
    if not n or n < 0 then return "--timeout-offset takes seconds (>= 0)" end
    opts.timeout_offset = n
  elseif a == "--listen" or a == "--web.listen-address" then
    local host, port = parse_listen(v or "")
    if not host then return a .. " takes PORT, :PORT, HOST:PORT or [V6]:PORT" end
    opts.listen = { host = host, port = port }
  elseif a == "--container" then
    if not v then return "--container takes a name" end
    opts.container = v
  elseif a == "--shard" then
    local s, err = targets.parse_shard(v)
    if not s then return err end
    targets.host_shard = s
  elseif a == "--otlp" then
    if not v or not v:match("^[Hh][Tt][Tt][Pp][Ss]?://") then
      return "--otlp takes an http:// or https:// URL"
    end
    opts.otlp = opts.otlp or {}
    opts.otlp.url = v
  elseif a == "--otlp-interval" then
    local n = tonumber(v)
    if not n or not (n >= 0.1) or n > 1e9 then
      return "--otlp-interval takes seconds (at least 0.1)"
    end
    opts.otlp = opts.otlp or {}
    opts.otlp.interval = n
  elseif a == "--otlp-header" then
    local name, value = (v or ""):match("^%s*([^:%s]+)%s*:%s*(.-)%s*$")
    if not name then return "--otlp-header takes \"Name: value\"" end
    opts.otlp = opts.otlp or {}
    opts.otlp.headers = opts.otlp.headers or {}
    opts.otlp.headers[name] = value
  elseif a == "--otlp-resource" then
    local name, value = (v or ""):match("^%s*([^=%s]+)%s*=(.*)$")
    if not name then return "--otlp-resource takes name=value" end
    opts.otlp = opts.otlp or {}
    opts.otlp.resource = opts.otlp.resource or {}
    opts.otlp.resource[name] = value
  elseif a == "--format" then
    if v ~= "text" and v ~= "json" then return "--format takes text or json" end
    opts.format = v
  end
end

--- Run the command line `args` (argv without the program name).
-- Options go before SCRIPT (whose own arguments follow it untouched);
-- `pod`, `check` and `once` also take theirs anywhere after the command.
-- @treturn integer the exit code
function M.main(args)
  local function usage_error(fmt, ...)
    common.err(fmt, ...)
    io.stderr:write(USAGE)
    return 2
  end
  local opts = { format = "text" }
  local i = 1
  while args[i] and args[i]:sub(1, 2) == "--" do
    local a = args[i]
    if a == "--version" then
      print(string.format("sonde %s (%s)", core.version, _VERSION))
      return 0
    elseif a == "--help" then
      io.stdout:write(USAGE)
      return 0
    end
    local name, val = a:match("^(%-%-[^=]+)=(.*)$")    -- --flag=value
    if a == "--config.check" then               -- a switch, as blackbox's
      opts.config_check = true
      i = i + 1
    else
      local e = take(opts, "global", name or a, name and val or args[i + 1])
      if e then return usage_error("%s", e) end
      i = i + (name and 1 or 2)
    end
  end
  local cmd = args[i]
  if opts.config_check then
    -- blackbox_exporter's --config.check: load the configuration, say so
    if not opts.config_file then return usage_error("--config.check needs --config.file") end
    local conf, err = blackbox.load(opts.config_file)
    if not conf then common.err("%s", err) return 1 end
    -- modules sonde cannot honour: each named, and the check fails
    for _, why in ipairs(conf.unsupported) do common.err("%s", why) end
    if #conf.unsupported > 0 then return 1 end
    print(string.format("%s: config file is ok: %s", opts.config_file,
      common.plural(#conf.names, "module")))
    return 0
  end
  if opts.config_file and cmd == "pod" then
    return usage_error("--config.file runs with a SCRIPT or alone, not with pod")
  end
  if opts.config_file and cmd ~= "check" and cmd ~= "once" then
    -- blackbox_exporter's command line: the configuration, and a script
    -- or none
    if opts.otlp and not opts.otlp.url then
      return usage_error("--otlp-interval, --otlp-header and --otlp-resource "
        .. "need --otlp URL")
    end
    return run.main(cmd and common.source(cmd) or { name = opts.config_file,
      load = function() end }, table.move(args, i + 1, #args, 1, {}),
      -- blackbox_exporter listens on :9115 by default (sonde: loopback)
      opts.listen or { host = "127.0.0.1", port = 9115 }, opts.otlp,
      { path = opts.config_file,
        offset = opts.timeout_offset or 0.5 })
  end
  if cmd == nil then return usage_error("no script given") end
  if cmd == "-h" then io.stdout:write(USAGE) return 0 end
  if cmd ~= "check" and cmd ~= "once" and cmd ~= "pod" then
    if opts.otlp and not opts.otlp.url then
      return usage_error("--otlp-interval, --otlp-header and --otlp-resource "
        .. "need --otlp URL")
    end
    return run.main(common.source(cmd), table.move(args, i + 1, #args, 1, {}),
      opts.listen, opts.otlp)
  end
  -- the command's own arguments: options anywhere, then the path and
  -- (once) probe names
  local rest = {}
  local j = i + 1
  while args[j] do
    local a = args[j]
    if a:sub(1, 2) == "--" then
      local e = take(opts, cmd, a, args[j + 1])
      if e then return usage_error("%s: %s", cmd, e) end
      j = j + 2
    else
      rest[#rest + 1] = a
      j = j + 1
    end
  end
  local path = rest[1]
  if not path then
    return usage_error("%s: no %s given", cmd, cmd == "pod" and "manifest"
      or "script")
  end
  if cmd ~= "once" and rest[2] then
    return usage_error("%s: unexpected argument %s", cmd, rest[2])
  end
  -- check and once with --config.file: the script's modules come from it
  local function source(p, c)
    local src = common.source(p, c)
    if opts.config_file then src = run.with_blackbox(src, opts.config_file) end
    return src
  end
  if cmd == "pod" then
    if opts.otlp and not opts.otlp.url then
      return usage_error("--otlp-interval, --otlp-header and --otlp-resource "
        .. "need --otlp URL")
    end
    return run.main(common.source(path, opts.container, true), {}, opts.listen,
      opts.otlp)
  elseif cmd == "check" then
    return check.main(source(path, opts.container))
  end
  return once.main(source(path, opts.container),
    table.move(rest, 2, #rest, 1, {}), opts.format)
end

return M
