-- spec/helpers.lua - the one helper module of the specs:
--
--   local H = require "helpers"
--
-- (`.busted` puts spec/?.lua on package.path; spec/support/setup.lua, run
-- by busted before any spec, loads it once for the whole run, with
-- sonde.log, sonde.json and sonde.core.)  Nothing here keeps another sonde
-- module across calls: each call requires what it uses, so it acts on the
-- modules of the spec file that calls it (busted loads them afresh for
-- every file).
--
-- Paths and files
--   H.root, H.build            absolute paths: the checkout, its build
--                              directory ($SONDE_BUILD, default build/)
--   H.host_bin                 the host binary, H.build .. "/bin/sonde"
--   H.q(s)                     quote s for /bin/sh
--   H.read_file(path)          the whole file, or nil
--   H.write(path, text[, mode]) write (and chmod, e.g. "755"); returns path
--   H.replace(path, text)      rewrite a file atomically (a host may read it)
--   H.tmpdir() / H.rmtree(path)  a fresh private directory / remove a tree
--   H.scratch()                a fresh directory that lasts until busted
--                              exits (spec/support/setup.lua removes it)
--   H.script(name, text)       a file `name` in a fresh scratch directory
--   H.sh(cmd)                  run a shell command: exit code, stdout+stderr
--   H.registry(method)         remember(x), finish(): x[method](x) for each
--   H.lua_env()                "LUA_PATH=... LUA_CPATH=..." for a child lua5.4
--   H.run_lua(code[, opts])    run Lua code in a child lua5.4 (see there)
--   H.sleep(s)                 sleep outside the loop (only to let something
--                              that must NOT happen have its chance)
--
-- Processes
--   H.pid()                    this process's pid
--   H.now()                    monotonic seconds (the core's clock)
--   H.proc_stat(pid)           { pid, comm, state, ppid, pgid, sid } or nil
--   H.procs(filter)            processes whose stat (with .cmd) pass filter
--   H.procs_in_groups(pgids)   processes in these process groups
--   H.sockets_of(pid)          sockets process pid holds open
--   H.cpu_seconds([pid])       user + system CPU seconds it has used
--   H.procs_matching(pattern)  processes whose command line matches
--   H.tags()                   unique numbers for command lines: :new(base)
--                              :add(t) :left(t) :left_all(list) :kill()
--   H.zombies_of([ppid])       zombie children of ppid (default: us)
--   H.pids_of(list)            the pids of a list of processes
--   H.describe_procs(list)     a list of processes as text, for messages
--   H.gone(pid)                the process is gone (or a zombie)
--   H.kill_groups(pids)        SIGKILL these process groups (teardown)
--   H.fd_count() / H.fd_list() our open descriptors: count / `ls -l` text
--   H.rss_kb()                 our resident set size
--   H.listening(port)          addresses listening on a TCP port
--
-- JSON and event lines
--   H.json_decode(s)           value, or nil and the error;  H.null
--   H.lines(text)              the lines of a text (linear, any length)
--   H.decode_lines(text)       decoded JSON objects, and the other lines
--   H.select(evs, name, where) events named `name` (any when nil) whose
--                              fields equal those of `where`
--   H.index_of(evs, name, where, from)  index of the first such event
--   H.after(evs, i)            the events after index i
--
-- In process: the loop of this busted process (spec/support/engine.lua)
--   H.drain([max])             sonde.run(): the loop until nothing is
--                              pending; an error after `max` s (default 30)
--   H.run(fn[, max])           fn as a task, drain; fn's values or error
--   H.eventually(pred[, timeout])  poll pred (default 2 s), letting the
--                              loop run; pred's last value
--   H.fresh()                  stop the current load: the next declarations
--                              go into a new one
--   H.run_for(seconds[, opts]) run the current load for `seconds`, then stop
--                              it; opts.at = { {t, fn}, ... } called during
--                              the run, opts.load() = the load to stop,
--                              opts.max = bound after the stop (20 s)
--   H.run_logged(seconds[, opts])  run_for with the log captured: the
--                              events it logged
--   H.stop_now()               stop the run_for in progress now
--   H.run_until_ran(ps[, n, max])  run the current load until each probe
--                              of `ps` ended `n` runs (1), then stop it
--   H.kill_services(cfg)       SIGKILL the groups of a load's services
--   H.scripted(dir, codes[, after])  a command exiting with codes in turn
--   H.error_here(fn, ...)      the message of the error fn(...) raises,
--                              asserting that its position is a line of
--                              the calling spec file; and that line (fn is
--                              a function of that file: sonde names the
--                              first caller outside its own files)
--   H.closer(list, name)       a <close> value that appends name to list
--   H.probe(prober, spec)      prober(spec, callback) and the loop: the result
--   H.spec_error(prober, spec, ...)  assert that the spec is refused at
--                              once, the message naming every `...`
--   H.prober(prober)           function(spec) -> H.probe(prober, spec) and
--                              function(spec, ...) -> H.spec_error(prober, ...)
--   H.accepted(prober, spec)   assert that the spec is accepted (the probe
--                              is cancelled at once)
--   H.capture()                log events as JSON into a file: :text()
--                              :all() :events(name, where) :close()
--   H.quiet_log                the file sonde's log goes to outside captures
--
-- The host binary (spec/support/host.lua)
--   H.host_run(args[, env[, timeout]])  run to its end: code, stdout, stderr
--   H.host_start(args[, env])  start in the background: a Host with
--     :stderr() :stdout() :events(name, where) :rc() :alive() :signal(sig)
--     :wait(timeout) :wait_for(pred, timeout) :term([timeout]) (SIGTERM,
--     then wait: the exit code) :service_pids() :cleanup()
--   H.host_until(args, cond[, timeout[, env]])  start, wait until cond(host)
--                              (15 s), SIGTERM; assert both, and exit 0;
--                              the host and its stderr
--   H.cleanup_hosts()          cleanup every host started and not cleaned
--   H.listen_port(h)           the port of a host started with --listen
--   H.fetch(port, path[, method])  GET (or method) a host endpoint
--
-- The fixture server (spec/support/fixture.lua)
--   H.fixture(opts)            start one: a Server with :url(path) :log()
--                              :requests() :connections() :clear_log()
--                              :stop() :alive(), .port, .host
--   H.stop_fixtures()          stop every server started and not stopped
--   H.closed_port()            a port where nothing listens (any more)
--   H.head_lines(head) H.header_lines(head, name) H.request_line(head)
--   H.request_target(head)     a logged request head, taken apart
--   H.urlencode(s)
--   H.self_signed(dir)         dir/cert.pem, dir/key.pem for 127.0.0.1
--   H.tls_server(dir)          openssl s_server -www with them: { port,
--                              pid, stop() }
--
-- The gRPC health server (spec/support/grpc.lua)
--   H.grpc_server(args)        spec/fixtures/grpc_health_server.py with
--                              these arguments: a Server with .port .pid
--                              :stop() :alive()
--   H.stop_grpc_servers()      stop every one started and not stopped
-- DNS (spec/support/dnsmasq.lua)
--   H.dnsmasq(args)            Debian's dnsmasq on 127.0.0.1 and a free port,
--                              serving what args declare: a Server with
--                              .port .pid :stop() :alive() :log()
--   H.dns_scripted()           spec/fixtures/dns_scripted.py: odd replies
--                              built byte by byte; .port .pid :stop()
--   H.stop_dnsmasqs()          stop every one of both started and not
--                              stopped
--   H.silent_udp()             a bound UDP socket that never answers:
--                              { port, close(), receive() }
-- TLS (spec/support/pki.lua)
--   H.pki(dir)                 a CA and leaves signed by it (good, soon,
--                              expired, other, client): { ca, ca_key,
--                              <leaf> = { cert, key } }
--   H.x509(cert, what)         `openssl x509 -noout <what>`, trimmed
--   H.not_after(cert)          its notAfter, seconds since the epoch
--   H.s_server(opts)           openssl s_server -www (opts.cert, opts.args):
--                              { port, pid, log(), stop() }
--   H.stop_s_servers()         stop every one started and not stopped
--
-- systemd's notify socket (spec/support/notify.lua)
--   H.notify_listener(dir[, name[, secs]])  a Listener with :messages()
--                              :find(line, from, msgs) :count(line, msgs)
--                              :dump() :stop(), .name
--   H.has_line(text, line)     text has a line exactly `line`
local H = {}

---------------------------------------------------------------------------
-- Paths and files
---------------------------------------------------------------------------

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
H.read_file = read_file

function H.q(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end
local q = H.q

local function cwd()
  local p = assert(io.popen("pwd", "r"))
  local d = p:read("l")
  p:close()
  return d
end

local function absolute(path, base)
  if path:sub(1, 1) == "/" then return path end
  path = path:gsub("^%./", "")
  return base .. "/" .. path
end

do
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  local dir = src:match("^(.*)/[^/]*$") or "."
  H.root = (absolute(dir, cwd()):gsub("/spec$", ""))
  local b = os.getenv("SONDE_BUILD")
  H.build = absolute((b and b ~= "") and b or "build", H.root)
  H.host_bin = H.build .. "/bin/sonde"
end

function H.write(path, content, mode)
  local f = assert(io.open(path, "wb"))
  assert(f:write(content))
  assert(f:close())
  if mode then
    assert(os.execute("chmod " .. q(mode) .. " " .. q(path)),
      "chmod " .. mode .. " " .. path .. " failed")
  end
  return path
end

function H.replace(path, content)
  H.write(path .. ".new", content)
  assert(os.rename(path .. ".new", path))
  return path
end

function H.tmpdir()
  local path = os.tmpname()
  os.remove(path)
  assert(os.execute("mkdir -m 700 " .. q(path)), "mkdir " .. path .. " failed")
  return path
end

--- A fresh directory under the run's scratch directory, which
-- spec/support/setup.lua removes when busted exits.
local scratch_root, scratch_n = nil, 0
function H.scratch()
  scratch_root = scratch_root or H.tmpdir()
  scratch_n = scratch_n + 1
  local d = scratch_root .. "/" .. scratch_n
  assert(os.execute("mkdir " .. q(d)), "mkdir " .. d .. " failed")
  return d
end

function H.remove_scratch()
  if scratch_root then H.rmtree(scratch_root) end
  scratch_root = nil
end

function H.script(name, text)
  return H.write(H.scratch() .. "/" .. name, text)
end

function H.rmtree(path)
  assert(path and path ~= "" and path ~= "/", "refusing to remove " .. tostring(path))
  os.execute("rm -rf " .. q(path))
end

--- A list of things to end: remember(x) keeps and returns x; finish()
-- calls x[method](x) on each kept one, and forgets them.
function H.registry(method)
  local list = {}
  local function remember(x)
    list[#list + 1] = x
    return x
  end
  local function finish()
    for _, x in ipairs(list) do x[method](x) end
    list = {}
  end
  return remember, finish
end

function H.sh(cmd)
  local p = assert(io.popen("(" .. cmd .. ") </dev/null 2>&1; echo \"rc=$?\"", "r"))
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)\n?$"))
  return rc, (out:gsub("rc=%d+\n?$", ""))
end

function H.sleep(s)
  os.execute(string.format("sleep %.3f", s))
end

-- The child sees the suite's modules whatever its directory.
function H.lua_env()
  local lpath = table.concat({ H.root .. "/lua/?.lua", H.root .. "/lua/?/init.lua",
    H.root .. "/spec/?.lua", package.path }, ";")
  local cpath = H.build .. "/lib/?.so;" .. package.cpath
  return "LUA_PATH=" .. q(lpath) .. " LUA_CPATH=" .. q(cpath)
end

--- Run Lua `code` in a child lua5.4 ($SONDE_LUA) with the suite's module
-- paths, under `timeout 30`, stdin /dev/null; returns its stdout and stderr
-- together, then io.popen's close values (ok, "exit", code).
--   opts.prefix  shell text run before (e.g. `trap "" CHLD;`)
--   opts.shell   the shell that runs it (default sh)
--   opts.loopback_resolver  run it in a private mount namespace whose
--                /etc/resolv.conf says `nameserver 127.0.0.1` (nothing
--                listens there: every DNS query fails at once, none leaves)
--   opts.resolv_conf, opts.hosts  run it in a private mount namespace
--                whose /etc/resolv.conf (/etc/hosts) has this text (a
--                scratch file, which the child may rewrite)
function H.run_lua(code, opts)
  opts = opts or {}
  local script = os.tmpname()
  H.write(script, code)
  local lua = os.getenv("SONDE_LUA") or "lua5.4"
  local inner = (opts.prefix or "") .. " exec " .. q(lua) .. " " .. q(script)
  local files = {}
  local function over(path, text)
    local f = os.tmpname()
    H.write(f, text)
    files[#files + 1] = f
    -- (cmp: the child runs only if it sees exactly this text)
    inner = "mount --bind " .. q(f) .. " " .. path .. " && cmp -s " .. q(f)
      .. " " .. path .. " && " .. inner
  end
  if opts.loopback_resolver then over("/etc/resolv.conf", "nameserver 127.0.0.1\n") end
  if opts.resolv_conf then over("/etc/resolv.conf", opts.resolv_conf) end
  if opts.hosts then over("/etc/hosts", opts.hosts) end
  local cmd = string.format("%s timeout 30 %s%s -c %s 2>&1 </dev/null",
    H.lua_env(), #files > 0 and "unshare -m " or "",
    opts.shell or "sh", q(inner))
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok, how, status = p:close()
  os.remove(script)
  for _, f in ipairs(files) do os.remove(f) end
  return out, ok, how, status
end

---------------------------------------------------------------------------
-- Processes
---------------------------------------------------------------------------

local our_pid
function H.pid()
  if not our_pid then
    -- read by this process itself (a child started to look would see its own)
    local stat = assert(read_file("/proc/self/stat"), "cannot read /proc/self/stat")
    our_pid = assert(tonumber(stat:match("^(%d+)")), "cannot parse /proc/self/stat")
  end
  return our_pid
end

function H.now()
  return require("sonde.core").now()
end

-- The numeric entries of /proc.
local function all_pids()
  local p = assert(io.popen("ls -1 /proc 2>/dev/null", "r"))
  local pids = {}
  for line in p:lines() do
    local pid = tonumber(line:match("^%d+$"))
    if pid then pids[#pids + 1] = pid end
  end
  p:close()
  return pids
end

-- comm is in parentheses and may hold spaces and parentheses: split at
-- the LAST ")".
function H.proc_stat(pid)
  pid = math.tointeger(pid)   -- (a pid decoded from JSON may be a float)
  local s = pid and read_file(string.format("/proc/%d/stat", pid))
  local comm, rest = (s or ""):match("^%d+ %((.*)%) (.*)$")
  if not comm then return nil end
  local f = {}
  for w in rest:gmatch("%S+") do f[#f + 1] = w end
  return { pid = pid, comm = comm, state = f[1], ppid = tonumber(f[2]),
           pgid = tonumber(f[3]), sid = tonumber(f[4]) }
end

local function cmdline(pid)
  local s = read_file(string.format("/proc/%d/cmdline", pid))
  return s and (s:gsub("%z+$", ""):gsub("%z", " "))
end

--- Processes (live or zombie) whose stat passes filter(st); each found
-- one gets `cmd`, its command line (NULs as spaces, or "[comm]").  This
-- process is left out.
function H.procs(filter)
  local me, found = H.pid(), {}
  for _, pid in ipairs(all_pids()) do
    local st = pid ~= me and H.proc_stat(pid)
    if st and filter(st) then
      local cmd = st.cmd or cmdline(pid)
      st.cmd = (cmd and cmd ~= "") and cmd or "[" .. st.comm .. "]"
      found[#found + 1] = st
    end
  end
  return found
end

--- `pgids`: a number, a list of numbers or a set { [pgid] = true }.
function H.procs_in_groups(pgids)
  local want = {}
  if type(pgids) == "number" then
    want[pgids] = true
  else
    for k, v in pairs(pgids) do
      if type(k) == "number" and v == true then want[k] = true end
      if type(v) == "number" then want[v] = true end
    end
  end
  return H.procs(function(st) return want[st.pgid] end)
end

--- (The `ls` that lists /proc is left out.)
function H.procs_matching(pattern)
  return H.procs(function(st)
    st.cmd = cmdline(st.pid)
    return st.cmd and st.cmd ~= "ls -1 /proc" and st.cmd:find(pattern)
  end)
end

--- Unique numbers to put in command lines ("301.123456", e.g. as a
-- `sleep` duration), to find or clean up what a spec started:
-- `tags.new(base)` makes and remembers one (`tags.add(t)` remembers one
-- made otherwise); `tags.left(t)` the live
-- processes (zombies left out) whose command line holds `t`;
-- `tags.left_all(list)` the same for every tag of `list`; `tags.kill()`
-- SIGKILLs, by pid, whatever still carries a remembered tag, and forgets
-- them (for after_each).
function H.tags()
  local tags, made = {}, {}
  function tags.new(base)
    local t = string.format("%d.%06d", base, math.random(0, 999999))
    made[#made + 1] = t
    return t
  end
  function tags.add(t) made[#made + 1] = t end
  function tags.left(t)
    local live = {}
    for _, p in ipairs(H.procs_matching(t:gsub("%p", "%%%0"))) do
      if p.state ~= "Z" then live[#live + 1] = p end
    end
    return live
  end
  function tags.left_all(list)
    local all = {}
    for _, t in ipairs(list) do
      for _, p in ipairs(tags.left(t)) do all[#all + 1] = p end
    end
    return all
  end
  function tags.kill()
    for _, p in ipairs(tags.left_all(made)) do
      os.execute(string.format("kill -KILL %d 2>/dev/null", p.pid))
    end
    made = {}
  end
  return tags
end

function H.zombies_of(ppid)
  ppid = ppid or H.pid()
  return H.procs(function(st) return st.ppid == ppid and st.state == "Z" end)
end

function H.pids_of(list)
  local pids = {}
  for i, p in ipairs(list) do pids[i] = p.pid end
  return pids
end

function H.describe_procs(list)
  local out = {}
  for _, p in ipairs(list) do
    out[#out + 1] = string.format("%d(pgid %s, %s) %s", p.pid, tostring(p.pgid),
      tostring(p.state), p.cmd or p.comm)
  end
  return table.concat(out, "; ")
end

function H.gone(pid)
  local st = H.proc_stat(pid)
  return st == nil or st.state == "Z"
end

--- Start a server in the background, outside the sanitizers' preloads
-- (make check SANITIZE=1), its output (stdout and stderr) into file `out`,
-- and wait up to `seconds` until that output has a line matching
-- `ready` (a grep basic regexp) or the server is gone.
-- @tparam string cmd the command line, already quoted (H.q)
-- @treturn integer|nil the server's pid
-- @treturn string its output so far (first line: "PID n")
function H.spawn_ready(cmd, out, ready, seconds)
  local p = assert(io.popen(table.concat({
    "exec </dev/null;",
    "env -u LD_PRELOAD -u ASAN_OPTIONS -u UBSAN_OPTIONS",
    cmd, ">" .. H.q(out), "2>&1 &",
    "pid=$!; echo \"PID $pid\";",
    "end=$(( $(date +%s%N) + " .. math.floor(seconds * 1e9) .. " ));",
    "while [ \"$(date +%s%N)\" -lt \"$end\" ]; do",
    "  grep -q " .. H.q(ready) .. " " .. H.q(out) .. " && break;",
    "  kill -0 $pid 2>/dev/null || break;",
    "  sleep 0.02;",
    "done;",
    "cat " .. H.q(out),
  }, " "), "r"))
  local text = p:read("a")
  p:close()
  return tonumber(text:match("PID (%d+)")), text
end

--- SIGTERM process `pid`, wait up to `grace` seconds (3) for it to go,
-- then SIGKILL it.
function H.terminate(pid, grace)
  os.execute(string.format("kill -TERM %d 2>/dev/null", pid))
  local deadline = H.now() + (grace or 3)
  while not H.gone(pid) and H.now() < deadline do H.sleep(0.02) end
  if not H.gone(pid) then
    os.execute(string.format("kill -KILL %d 2>/dev/null", pid))
  end
end

function H.kill_groups(pids)
  for _, pid in ipairs(pids) do
    pid = math.tointeger(pid)
    if pid and pid > 1 then
      os.execute(string.format("kill -KILL -- -%d 2>/dev/null; kill -KILL %d "
        .. "2>/dev/null", pid, pid))
    end
  end
end

--- The listing is written to a file by a child while we hold no extra
-- descriptor (an io.popen pipe would count), then read back.
function H.fd_count()
  local tmp = os.tmpname()
  local ok = os.execute("ls -1 /proc/" .. H.pid() .. "/fd > " .. q(tmp) .. " 2>/dev/null")
  local text = read_file(tmp) or ""
  os.remove(tmp)
  assert(ok, "listing /proc/" .. H.pid() .. "/fd failed")
  local n = 0
  for line in text:gmatch("[^\n]+") do
    if line:match("^%d+$") then n = n + 1 end
  end
  return n
end

function H.fd_list()
  return select(2, H.sh("ls -l /proc/" .. H.pid() .. "/fd"))
end

--- Sockets process `pid` holds open.
function H.sockets_of(pid)
  local p = assert(io.popen("ls -l /proc/" .. pid .. "/fd 2>/dev/null"))
  local n = 0
  for line in p:lines() do
    if line:find("socket:", 1, true) then n = n + 1 end
  end
  p:close()
  return n
end

local clk_tck
--- CPU seconds (user + system) process `pid` (default: this one) has used.
function H.cpu_seconds(pid)
  clk_tck = clk_tck or tonumber((select(2, H.sh("getconf CLK_TCK")))) or 100
  local st = assert(read_file("/proc/" .. (pid or H.pid()) .. "/stat"))
  local f = {}
  for w in st:match("%) (.*)$"):gmatch("%S+") do f[#f + 1] = w end
  -- fields 14 and 15 of stat (utime, stime); f[1] is field 3
  return (tonumber(f[12]) + tonumber(f[13])) / clk_tck
end

function H.rss_kb()
  local s = assert(read_file("/proc/self/status"))
  return assert(tonumber(s:match("VmRSS:%s*(%d+)")))
end

--- Local addresses listening on TCP `port`: "127.0.0.1" for IPv4, "v6:"
-- and the raw hex of /proc/net/tcp6 for IPv6.
function H.listening(port)
  local out = {}
  for _, f in ipairs { "/proc/net/tcp", "/proc/net/tcp6" } do
    for line in (read_file(f) or ""):gmatch("[^\n]+") do
      local addr, p, st = line:match("^%s*%d+:%s+(%x+):(%x+)%s+%x+:%x+%s+(%x+)")
      if addr and tonumber(p, 16) == port and st == "0A" then
        if #addr == 8 then   -- a little-endian 32-bit word
          local b = {}
          for i = 7, 1, -2 do b[#b + 1] = tonumber(addr:sub(i, i + 1), 16) end
          out[#out + 1] = table.concat(b, ".")
        else
          out[#out + 1] = "v6:" .. addr
        end
      end
    end
  end
  return out
end

---------------------------------------------------------------------------
-- JSON and event lines
---------------------------------------------------------------------------

local ok_cjson, cjson = pcall(require, "cjson")
local dkjson = (not ok_cjson) and require "dkjson" or nil

function H.json_decode(s)
  if ok_cjson then
    local ok, v = pcall(cjson.decode, s)
    if not ok then return nil, v end
    return v
  end
  local v, _, err = dkjson.decode(s, 1, nil)
  if err then return nil, err end
  return v
end
H.null = ok_cjson and cjson.null or dkjson.null

--- One pass with plain find: patterns that rescan are quadratic on the
-- megabyte-long lines some specs produce.
function H.lines(text)
  local out, pos = {}, 1
  text = text or ""
  while true do
    local nl = text:find("\n", pos, true)
    if not nl then break end
    out[#out + 1] = text:sub(pos, nl - 1)
    pos = nl + 1
  end
  if pos <= #text then out[#out + 1] = text:sub(pos) end
  return out
end

function H.decode_lines(text)
  local good, bad = {}, {}
  for _, line in ipairs(H.lines(text)) do
    if line ~= "" then
      local v = H.json_decode(line)
      if type(v) == "table" then good[#good + 1] = v else bad[#bad + 1] = line end
    end
  end
  return good, bad
end

local function matches(e, name, where)
  if name ~= nil and e.event ~= name then return false end
  for k, v in pairs(where or {}) do
    if e[k] ~= v then return false end
  end
  return true
end

function H.select(evs, name, where)
  local out = {}
  for _, e in ipairs(evs) do
    if matches(e, name, where) then out[#out + 1] = e end
  end
  return out
end

function H.index_of(evs, name, where, from)
  for i = from or 1, #evs do
    if matches(evs[i], name, where) then return i end
  end
end

function H.after(evs, i)
  return table.move(evs, i + 1, #evs, 1, {})
end

require("support.engine")(H)
require("support.host")(H)
require("support.fixture")(H)
require("support.notify")(H)
require("support.grpc")(H)
require("support.dnsmasq")(H)
require("support.pki")(H)

return H
