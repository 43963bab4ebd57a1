--- Targets from service discovery, in Prometheus's formats, and sharding
-- as Prometheus's `hashmod` relabel action computes it.
--
--   local web = sonde.targets.file_sd("/etc/sonde/web.json", { refresh = 30 })
--   local api = sonde.targets.http_sd("http://127.0.0.1:8500/sd", { refresh = 60 })
--   sonde.probe_each(web, function(t)
--     return { http_get = { url = "http://" .. t.address .. "/health" },
--              period = 15 }
--   end)
--
-- A **target** is a table `{ address = "host:port", labels = { __address__
-- = "host:port", <group labels>, __meta_filepath | __meta_url = ... },
-- host = "host", port = number|nil, name = "...", key = "..." }`:
-- `labels` are the target's labels as Prometheus discovers them (the
-- group's labels, then `__address__`, which wins; file_sd adds
-- `__meta_filepath`, http_sd `__meta_url`), `host` and `port` the address
-- taken apart (`[::1]:9100` gives `::1`, 9100), `name` the address
-- followed by the labels that do not start with `__` (`10.0.0.1:80`,
-- `10.0.0.1:80{env="prod"}`): the default probe name of sonde.probe_each;
-- `key` all the labels, sorted (`{__address__="10.0.0.1:80", env="prod"}`):
-- what tells two targets apart.  Two targets with the same labels are one.
--
-- A **source** (what `file_sd`, `http_sd`, `static` and `shard` return)
-- holds the current list of targets: `src:list()` (a new array of copies
-- each call; `{}` before the first good read) and `src:on_change(fn)`,
-- `fn(list)` called after each change.  A source belongs to the script's
-- load (sonde.config): its refresh timer and an http_sd request in flight
-- are the load's, ended by a reload or stop.  When a read fails (a file
-- that does not parse, an HTTP error), the error is logged
-- (`targets_error`) and the last good list stays, as Prometheus does.
--
-- **Sharding** (`shard`, probe_each's `shard` option, the host's `--shard
-- I/N`): a target is kept on shard I (0 <= I < N) when the MD5 sum of its
-- source labels' values joined by the separator (default `__address__`,
-- separator ";"), read as a big-endian unsigned 64-bit integer from its
-- last 8 bytes, modulo N, is I: Prometheus's `hashmod`
-- (model/relabel/relabel.go), so that `relabel_configs: [{source_labels:
-- [__address__], modulus: N, target_label: __tmp_hash, action: hashmod},
-- {source_labels: [__tmp_hash], regex: I, action: keep}]` keeps exactly
-- the same targets.  A label that is missing counts as "".
-- @module sonde.targets
local core = require "sonde.core"
local validate = require "sonde.validate"
local log = require "sonde.log"
local task = require "sonde.task"
local probers = require "sonde.probers"

local M = {}

local fmt = string.format
local fail = validate.fail

--- Default seconds between two reads of a file_sd file (Prometheus's
-- refresh_interval for file_sd).
M.FILE_REFRESH = 300
--- Default seconds between two requests of http_sd (Prometheus's).
M.HTTP_REFRESH = 60
--- The shortest refresh (seconds) of file_sd and http_sd: a shorter one
-- would poll in a busy loop (http_sd: a storm of requests, each timing out
-- at once, its timeout being the refresh by default).
M.MIN_REFRESH = 0.01
--- Default bytes of an http_sd response read at most.
M.HTTP_MAX_BODY = 16 * 1024 * 1024

--- The shard the host was told (`--shard I/N`): `{ i, n }` or nil.
-- sonde.probe_each keeps only this shard's targets unless given its own
-- `shard` option (false: all).
M.host_shard = nil

local LABEL_NAME = "^[a-zA-Z_][a-zA-Z0-9_]*$"

---------------------------------------------------------------------------
-- Targets
---------------------------------------------------------------------------

local function quote(v)
  return '"' .. v:gsub('[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"',
    ["\n"] = "\\n" }) .. '"'
end

local function sorted_names(labels)
  local names = {}
  for k in pairs(labels) do names[#names + 1] = k end
  table.sort(names)
  return names
end

-- "host:port" -> host, port; "[v6]:port" -> v6, port; else address, nil.
local function split_address(a)
  local h, p = a:match("^%[([^%]]*)%]:(%d+)$")
  if not h then h, p = a:match("^([^:]*):(%d+)$") end
  if not h then return a:match("^%[([^%]]*)%]$") or a, nil end
  return h, tonumber(p)
end

--- Make a target from its labels (which must hold `__address__`).
-- @tparam table labels label name -> string value (taken, not copied)
-- @treturn table the target (see the module doc)
function M.target(labels)
  local address = labels.__address__
  local names = sorted_names(labels)
  local all, user = {}, {}
  for _, k in ipairs(names) do
    all[#all + 1] = k .. "=" .. quote(labels[k])
    if k:sub(1, 2) ~= "__" then user[#user + 1] = k .. "=" .. quote(labels[k]) end
  end
  local host, port = split_address(address)
  return { address = address, labels = labels, host = host, port = port,
    key = "{" .. table.concat(all, ", ") .. "}",
    name = #user > 0 and address .. "{" .. table.concat(user, ",") .. "}"
      or address }
end

local function copy_target(t)
  local labels = {}
  for k, v in pairs(t.labels) do labels[k] = v end
  return { address = t.address, labels = labels, host = t.host, port = t.port,
    key = t.key, name = t.name }
end

-- A decoded null (lua-cjson's or lyaml's).
local function is_null(v)
  if v == nil or type(v) == "userdata" then return true end
  local mt = type(v) == "table" and getmetatable(v)
  return mt and mt._type == "LYAML null" or false
end

-- A scalar of a document as a label value: strings; YAML integers too
-- (a YAML `port: 80` is the string "80" to Prometheus).
local function scalar(v, yaml)
  if type(v) == "string" then return v end
  if yaml and math.type(v) == "integer" then return tostring(v) end
  if yaml and type(v) == "boolean" then return tostring(v) end
  return nil
end

--- Targets from a decoded list of target groups (`[{ "targets": [...],
-- "labels": {...} }, ...]`), Prometheus's rules: only those two fields;
-- label names `[a-zA-Z_][a-zA-Z0-9_]*` and string values; a null group is
-- an error; `extra` labels (e.g. `__meta_filepath`) are added to every
-- group; a target's `__address__` wins over a group's.  Targets with the
-- same labels are one; an empty address is skipped.
-- @param doc the decoded document
-- @tparam[opt] table extra label -> value added to each group
-- @tparam[opt] boolean yaml the document was YAML (integers are strings)
-- @return the list of targets | nil, error message
function M.from_groups(doc, extra, yaml)
  if doc == nil or is_null(doc) then doc = {} end   -- an empty YAML file
  if type(doc) ~= "table" then
    return nil, fmt("expected a list of target groups, got %s", type(doc))
  end
  local n = #doc
  for k in pairs(doc) do
    if math.type(k) ~= "integer" or k < 1 or k > n then
      return nil, "expected a list of target groups, got an object"
    end
  end
  local out, seen = {}, {}
  for i = 1, n do
    local g = doc[i]
    if is_null(g) then return nil, "nil target group item found" end
    if type(g) ~= "table" then
      return nil, fmt("target group %d: expected an object, got %s", i, type(g))
    end
    for k in pairs(g) do
      if k ~= "targets" and k ~= "labels" then
        return nil, fmt("target group %d: unknown field %q", i, tostring(k))
      end
    end
    local labels = {}
    if not is_null(g.labels) then
      if type(g.labels) ~= "table" or (#g.labels > 0) then
        return nil, fmt("target group %d: labels: expected an object", i)
      end
      for k, v in pairs(g.labels) do
        if type(k) ~= "string" or not k:match(LABEL_NAME) then
          return nil, fmt("target group %d: labels: %q is not a valid label "
            .. "name", i, tostring(k))
        end
        local s = scalar(v, yaml)
        if not s then
          return nil, fmt("target group %d: labels.%s: expected a string, "
            .. "got %s", i, k, type(v))
        end
        labels[k] = s
      end
    end
    for k, v in pairs(extra or {}) do labels[k] = v end
    local list = g.targets
    if is_null(list) then list = {} end
    if type(list) ~= "table" then
      return nil, fmt("target group %d: targets: expected a list", i)
    end
    for j = 1, #list do
      local a = scalar(list[j], yaml)
      if not a then
        return nil, fmt("target group %d: targets[%d]: expected a string, "
          .. "got %s", i, j, type(list[j]))
      end
      if a ~= "" then
        local l = {}
        for k, v in pairs(labels) do l[k] = v end
        l.__address__ = a
        local t = M.target(l)
        if not seen[t.key] then
          seen[t.key] = true
          out[#out + 1] = t
        end
      end
    end
  end
  return out
end

---------------------------------------------------------------------------
-- Sharding
---------------------------------------------------------------------------

--- Prometheus's hashmod of a string: the MD5 sum's last 8 bytes as a
-- big-endian unsigned integer, modulo n.
-- @tparam string s
-- @tparam integer n 1 .. 2^31
-- @treturn integer 0 .. n - 1
function M.hashmod(s, n)
  local d = core.md5(s)
  local hi, lo = string.unpack(">I4>I4", d, 9)
  local r = hi % n
  r = (r * 65536) % n
  r = (r * 65536) % n
  return (r + lo) % n
end

local function check_shard(ctx, i, n, opts)
  if math.type(n) ~= "integer" or n < 1 or n > 2^31 then
    fail(ctx, "n", "must be a whole number 1 .. 2^31, got %s", validate.show(n))
  end
  if math.type(i) ~= "integer" or i < 0 or i >= n then
    fail(ctx, "i", "must be a whole number 0 .. %d (n - 1), got %s", n - 1,
      validate.show(i))
  end
  opts = opts or {}
  validate.checks.table(ctx, opts, "opts")
  for k in pairs(opts) do
    if k ~= "source_labels" and k ~= "separator" then
      fail(ctx, tostring(k), "unknown option (source_labels, separator)")
    end
  end
  local sl = opts.source_labels or { "__address__" }
  validate.checks.array(ctx, sl, "source_labels")
  if #sl == 0 then fail(ctx, "source_labels", "must not be empty") end
  for j, l in ipairs(sl) do
    if type(l) ~= "string" or not l:match(LABEL_NAME) then
      fail(ctx, fmt("source_labels[%d]", j), "must be a label name, got %s",
        validate.show(l))
    end
  end
  local sep = opts.separator or ";"
  if type(sep) ~= "string" then
    fail(ctx, "separator", "must be a string, got %s", type(sep))
  end
  return { i = i, n = n, source_labels = sl, separator = sep }
end

--- The hashmod value of a target: its source labels' values joined by the
-- separator, hashed, modulo n.
-- @tparam table t a target (or anything with `labels`)
-- @tparam integer n
-- @tparam[opt] table opts `source_labels` (default `{ "__address__" }`),
-- `separator` (default ";")
-- @treturn integer 0 .. n - 1
function M.shard_of(t, n, opts)
  local s = check_shard({ where = "sonde.targets.shard_of" }, 0, n, opts)
  return M.hashmod(M.shard_value(t, s), n)
end

--- The string a shard hashes for target t (see `shard_of`).
function M.shard_value(t, s)
  local vals = {}
  for j, l in ipairs(s.source_labels) do vals[j] = t.labels[l] or "" end
  return table.concat(vals, s.separator)
end

--- Check a shard given as `{ i, n, source_labels =, separator = }` (or
-- `{ i = , n = }`).
-- @return the checked shard `{ i, n, source_labels, separator }`
-- @raise naming the field
function M.check_shard(where, v)
  local ctx = { where = where }
  validate.checks.table(ctx, v, "shard")
  local opts = {}
  for k, x in pairs(v) do
    if k ~= 1 and k ~= 2 and k ~= "i" and k ~= "n" then opts[k] = x end
  end
  return check_shard(ctx, v.i or v[1], v.n or v[2], opts)
end

local function keeps(s, t)
  return M.hashmod(M.shard_value(t, s), s.n) == s.i
end
M.keeps = keeps

--- Parse the host's `--shard I/N`.
-- @return `{ i, n }` | nil, error text
function M.parse_shard(text)
  local i, n = (text or ""):match("^(%d+)/(%d+)$")
  i, n = math.tointeger(tonumber(i)), math.tointeger(tonumber(n))
  if not i or not n or n < 1 or n > 2^31 or i >= n then
    return nil, "--shard takes I/N with 0 <= I < N (e.g. 0/3)"
  end
  return { i = i, n = n }
end

---------------------------------------------------------------------------
-- Sources
---------------------------------------------------------------------------

local Source = {}
Source.__index = Source
M.Source = Source

local function new_source(kind, name)
  return setmetatable({ kind = kind, name = name, targets = {}, subs = {},
    scope = task.current(), reads = 0, errors = 0 }, Source)
end

--- True for a source (what file_sd, http_sd, static and shard return).
function M.is_source(v) return getmetatable(v) == Source end

--- The current targets: a new array of copies.
-- @treturn table
function Source:list()
  local out = {}
  for i, t in ipairs(self.targets) do out[i] = copy_target(t) end
  return out
end

--- Call `fn(list)` after each change of the list (from the loop).
function Source:on_change(fn)
  if type(fn) ~= "function" then
    validate.raise("source:on_change: function expected")
  end
  self.subs[#self.subs + 1] = fn
end

-- Take a good read: the new list replaces the old when it differs.
function Source:set(list)
  self.reads = self.reads + 1
  self.last_error = nil
  local same = #list == #self.targets
  if same then
    for i, t in ipairs(list) do
      if t.key ~= self.targets[i].key then same = false break end
    end
  end
  if same then return end
  self.targets = list
  log.event("info", "targets", { source = self.kind, from = self.name,
    targets = #list })
  for _, fn in ipairs(self.subs) do fn(self:list()) end
end

-- A failed read: logged, the last good list stays.
function Source:failed(err)
  self.errors = self.errors + 1
  self.last_error = err
  log.event("error", "targets_error", { source = self.kind, from = self.name,
    error = err, kept = #self.targets })
end

-- Call fn after `seconds`, in the load the source belongs to, unless that
-- ended.
function Source:after(seconds, fn)
  if self.scope.closed then return end
  task.within(self.scope, task.after, seconds, fn)
end

---------------------------------------------------------------------------
-- file_sd
---------------------------------------------------------------------------

local FILE_OPTS = validate.schema {
  { "refresh", "seconds", default = M.FILE_REFRESH, min = M.MIN_REFRESH },
}

local decoders = {}

function decoders.json(text)
  local ok, cjson = pcall(require, "cjson.safe")
  if not ok then return nil, "reading JSON needs lua-cjson (Debian: lua-cjson)" end
  local doc, err = cjson.decode(text)
  if doc == nil then return nil, "JSON: " .. tostring(err) end
  return doc
end

--- Levels of nesting a YAML file_sd file may have at most: Prometheus's
-- YAML reader (go-yaml) refuses more ("exceeded max depth of 10000").
M.YAML_MAX_DEPTH = 10000

-- Deeper than M.YAML_MAX_DEPTH?  Told from libyaml's events, before the
-- document is built: libyaml takes time quadratic in the depth (100000
-- levels, 200 KB: about 20 s of the loop), so the scan stops at the bound.
-- A text that does not parse is left to lyaml.load to report.
local function too_deep(text)
  local okr, yaml = pcall(require, "yaml")
  if not okr or type(yaml.parser) ~= "function" then return false end
  local deep = false
  pcall(function()
    local depth = 0
    for ev in yaml.parser(text) do
      local t = ev.type
      if t == "SEQUENCE_START" or t == "MAPPING_START" then
        depth = depth + 1
        if depth > M.YAML_MAX_DEPTH then deep = true break end
      elseif t == "SEQUENCE_END" or t == "MAPPING_END" then
        depth = depth - 1
      end
    end
  end)
  return deep
end

function decoders.yaml(text)
  local ok, lyaml = pcall(require, "lyaml")
  if not ok then return nil, "reading YAML needs lua-yaml (Debian: lua-yaml)" end
  if too_deep(text) then
    return nil, fmt("YAML: nested deeper than %d levels", M.YAML_MAX_DEPTH)
  end
  local okp, doc = pcall(lyaml.load, text)
  if not okp then return nil, "YAML: " .. tostring(doc) end
  return doc
end

-- Read and decode the file: the targets | nil, error.
local function read_file(path, format)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text, rerr = f:read("a")
  f:close()
  if not text then return nil, fmt("%s: %s", path, tostring(rerr)) end
  local doc, derr = decoders[format](text)
  if derr then return nil, fmt("%s: %s", path, derr) end
  local list, gerr = M.from_groups(doc, { __meta_filepath = path },
    format == "yaml")
  if not list then return nil, fmt("%s: %s", path, gerr) end
  return list
end

--- Targets from a file in Prometheus's file_sd format: a JSON (`.json`)
-- or YAML (`.yml`, `.yaml`) list of `{ targets = { "host:port", ... },
-- labels = { name = "value" } }`.  The file is read at once (so a script's
-- load sees its targets, and `sonde check` lists their probes), then
-- looked at every `refresh` seconds and read again when it changed (its
-- inode, size, modification or change time).  A file that does not parse
-- keeps the last good list (the error is logged, `targets_error`); a file
-- that does not exist (any more) has no targets, as a file_sd glob that
-- matches nothing; a path that is not a regular file (a directory, a
-- FIFO, a device) is an error, never read.  Each target gets the label
-- `__meta_filepath`.
-- @tparam string path
-- @tparam[opt] table opts `refresh` (seconds, default 300, at least 0.01)
-- @treturn table the source
-- @raise on a path without a known extension or a bad option
function M.file_sd(path, opts)
  local ctx = { where = "sonde.targets.file_sd" }
  if type(path) ~= "string" or path == "" then
    fail(ctx, "path", "must be a non-empty string, got %s", validate.show(path))
  end
  local ext = (path:match("%.(%w+)$") or ""):lower()
  local format = ext == "json" and "json"
    or (ext == "yml" or ext == "yaml") and "yaml"
  if not format then
    fail(ctx, "path", "must end in .json, .yml or .yaml (Prometheus's "
      .. "file_sd), got %q", path)
  end
  local o = FILE_OPTS:apply(ctx, opts or {})
  local src = new_source("file_sd", path)
  src.refresh = o.refresh
  local stamp = false     -- the file's stamp when last read (nil: missing)
  local function look()
    local now, serr, errno = core.file_stamp(path)
    if now == stamp then return end
    stamp = now
    if not now then
      if errno == 2 then return src:set({}) end      -- ENOENT: no targets
      return src:failed(serr)
    end
    local list, err = read_file(path, format)
    if list then src:set(list) else src:failed(err) end
  end
  look()
  local function poll()
    look()
    src:after(src.refresh, poll)
  end
  src:after(src.refresh, poll)
  return src
end

---------------------------------------------------------------------------
-- http_sd
---------------------------------------------------------------------------

local HTTP_OPTS = validate.schema {
  { "refresh", "seconds", default = M.HTTP_REFRESH, min = M.MIN_REFRESH },
  { "timeout", "seconds" },
  { "max_body", "count", default = M.HTTP_MAX_BODY, min = 1 },
  { "headers", "table" },
  { "tls", "table" },
}

-- Prometheus: `^(?i:application\/json(;\s*charset=("utf-8"|utf-8))?)$`,
-- on the trimmed header.
local function json_content_type(v)
  v = (v or ""):match("^%s*(.-)%s*$"):lower()
  if v == "application/json" then return true end
  local rest = v:match("^application/json;%s*charset=(.*)$")
  return rest == "utf-8" or rest == '"utf-8"'
end

--- Targets from an HTTP endpoint in Prometheus's http_sd format: a GET
-- (with `Accept: application/json` and
-- `X-Prometheus-Refresh-Interval-Seconds`) answering 200 with
-- `Content-Type: application/json` and a JSON list of target groups (see
-- `file_sd`).  Sent at once, then `refresh` seconds after each request
-- started, on the loop (never blocking it); any other answer, a failed
-- request or a body that does not parse keeps the last good list (the
-- error is logged, `targets_error`).  Each target gets the label
-- `__meta_url`.  Before the first answer the list is empty.
-- @tparam string url http:// or https://
-- @tparam[opt] table opts `refresh` (seconds, default 60, at least
-- 0.01), `timeout`
-- (seconds, default the refresh, at most 30), `max_body` (bytes, default
-- 16 MiB: a longer answer is an error), `headers`, `tls` (as http_get's)
-- @treturn table the source
-- @raise on a bad URL or option
function M.http_sd(url, opts)
  local ctx = { where = "sonde.targets.http_sd" }
  local o = HTTP_OPTS:apply(ctx, opts or {})
  local headers = {}
  for k, v in pairs(o.headers or {}) do headers[k] = v end
  headers["Accept"] = "application/json"
  headers["X-Prometheus-Refresh-Interval-Seconds"] = fmt("%g", o.refresh)
  if type(url) ~= "string" then
    fail(ctx, "url", "must be a string, got %s", validate.show(url))
  end
  local hopts = probers.handlers.http_get.prepare(ctx, {
    url = url, headers = headers, tls = o.tls,
    timeout = o.timeout or math.min(o.refresh, 30),
    max_body = o.max_body + 1, follow_redirects = "same-origin",
  })
  local src = new_source("http_sd", url)
  src.refresh = o.refresh
  local function done(r)
    if r.http_status == nil or r.http_status == 0 then
      return src:failed(r.error or r.output or r.reason)
    end
    if r.http_status ~= 200 then
      return src:failed(fmt("server returned HTTP status %d", r.http_status))
    end
    local ct = (r.headers or {})["content-type"]
    if not json_content_type(ct) then
      return src:failed(fmt("unsupported content type %q", ct or ""))
    end
    if r.truncated or #(r.body or "") > o.max_body then
      return src:failed(fmt("response larger than max_body (%d bytes)",
        o.max_body))
    end
    local doc, err = decoders.json(r.body or "")
    if err then return src:failed(err) end
    local list, gerr = M.from_groups(doc, { __meta_url = url })
    if not list then return src:failed(gerr) end
    src:set(list)
  end
  local function request()
    if src.scope.closed then return end
    local started = core.now()
    src.inflight = task.within(src.scope, task.start, "sonde.targets.http_sd",
      function(k) return probers.handlers.http_get.start(hopts, k) end,
      function(r)
        src.inflight = nil
        done(r)
        src:after(math.max(0, started + src.refresh - core.now()), request)
      end)
  end
  request()
  return src
end

---------------------------------------------------------------------------
-- static lists and shards
---------------------------------------------------------------------------

--- A fixed list of targets: addresses (`"host:port"`) and target groups
-- (`{ targets = {...}, labels = {...} }`), mixed.
-- @tparam table list
-- @treturn table the source
-- @raise on a malformed list
function M.static(list)
  local ctx = { where = "sonde.targets.static" }
  validate.checks.table(ctx, list, "list")
  local groups = {}
  for i, x in ipairs(list) do
    groups[i] = type(x) == "string" and { targets = { x } } or x
  end
  local targets, err = M.from_groups(groups)
  if not targets then fail(ctx, "list", "%s", err) end
  local src = new_source("static", "static")
  src.targets = targets
  return src
end

--- The targets of `src` on shard `i` of `n` (see the module doc).
-- @tparam table src a source, or a list for `static`
-- @tparam integer i 0 .. n - 1
-- @tparam integer n
-- @tparam[opt] table opts `source_labels` (default `{ "__address__" }`),
-- `separator` (default ";")
-- @treturn table a source that follows src
-- @raise on bad arguments
function M.shard(src, i, n, opts)
  local s = check_shard({ where = "sonde.targets.shard" }, i, n, opts)
  if not M.is_source(src) then src = M.static(src) end
  local out = new_source("shard", fmt("%s %d/%d", src.name, i, n))
  out.sharded = s
  local function filter(list)
    local kept = {}
    for _, t in ipairs(list) do
      if keeps(s, t) then kept[#kept + 1] = t end
    end
    return kept
  end
  out.targets = filter(src.targets)
  src:on_change(function(list) out:set(filter(list)) end)
  return out
end

return M
