-- The Lua modules form a graph without cycles, and every module takes
-- its dependencies at its top (`local x = require "sonde.x"`), never
-- inside a function (a late require is how a cycle hides).  The graph is
-- read from the sources; README's "Inside sonde" describes the layers.
local helpers = require "helpers"

local ROOT = "lua/sonde"

local function modules()
  local list = {}
  local p = assert(io.popen("cd " .. ROOT .. " && find . -name '*.lua' | sort"))
  for f in p:lines() do
    local name = "sonde." .. f:gsub("^%./", ""):gsub("%.lua$", ""):gsub("/", ".")
    name = name:gsub("%.init$", "")
    list[name] = ROOT .. "/" .. f:gsub("^%./", "")
  end
  p:close()
  return list
end

describe("the Lua modules", function()
  local mods = modules()

  it("are all found", function()
    for _, m in ipairs { "sonde", "sonde.task", "sonde.config", "sonde.worker",
        "sonde.ticker", "sonde.validate", "sonde.probers", "sonde.json",
        "sonde.endpoints", "sonde.metrics", "sonde.host", "sonde.host.run",
        "sonde.host.check", "sonde.host.once", "sonde.host.common" } do
      assert.is_string(mods[m], m)
    end
  end)

  it("require sonde modules only at their top, as `local x = require`",
    function()
    local late = {}
    for name, path in pairs(mods) do
      local n = 0
      for line in helpers.read_file(path):gmatch("[^\n]*") do
        n = n + 1
        local code = line:gsub("%-%-.*$", "")
        if code:find("require%s*[%(\"']") then
          local top = code:match('^local [%w_]+ = require "sonde[%w.]*"$')
          -- optional libraries (lyaml; cjson.safe, for json expectations)
          -- are loaded where they are used
          local optional = code:find('pcall(require, "lyaml")', 1, true)
            or code:find('pcall(require, "cjson.safe")', 1, true)
          if not top and not optional then
            late[#late + 1] = string.format("%s:%d: %s", path, n, line)
          end
        end
      end
      assert.is_string(name)
    end
    table.sort(late)
    assert.are.same({}, late)
  end)

  it("form a graph without cycles", function()
    local deps = {}
    for name, path in pairs(mods) do
      deps[name] = {}
      for d in helpers.read_file(path):gmatch('require "(sonde[%w.]*)"') do
        if d ~= "sonde.core" then deps[name][#deps[name] + 1] = d end
      end
    end
    local state, cycles = {}, {}
    local function visit(m, stack)
      state[m] = "open"
      for _, d in ipairs(deps[m] or {}) do
        assert.is_table(deps[d], m .. " requires unknown " .. d)
        if state[d] == "open" then
          cycles[#cycles + 1] = table.concat(stack, " -> ") .. " -> " .. d
        elseif not state[d] then
          stack[#stack + 1] = d
          visit(d, stack)
          stack[#stack] = nil
        end
      end
      state[m] = "done"
    end
    for m in pairs(deps) do
      if not state[m] then visit(m, { m }) end
    end
    assert.are.same({}, cycles)
    -- the bottom layers require nothing of sonde's
    for _, m in ipairs { "sonde.json", "sonde.validate", "sonde.worker",
        "sonde.nagios", "sonde.redact" } do
      assert.are.same({}, deps[m], m)
    end
  end)
end)
