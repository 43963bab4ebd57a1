-- src/pattern.c: the C copy of Lua 5.4's pattern matcher that the
-- expectations use (core.pattern_find, core.pattern_check), against
-- string.find itself; and core.quote, how messages show a target's bytes.
local core = require "sonde.core"

describe("core.pattern_find", function()
  local patterns = {
    "ok", "^ok", "ok$", "o.", "%d+", "^%+PONG", "[%w_]+=", "%bxy", "%b()",
    "%f[%w]%w+", "%f[%W]", "(a)(b)%2", "(%d)%1", "a-b", "a?b", "a+?",
    "[^%s]+$", "x*$", ".-", ".-$", "", "^", "$", "^$", "%z", "[a-]", "[]]",
    "[^]]", "%]", "a%-b", "()a", "(()a)%2", "[%a-z]", "[%d%.]+", "^250 ",
    "^2%d%d[ -]", "%s*$", "%.", "[.]", "a)", "((a)(b))", "%u%l+", "%x%x",
    "[%z]", "\0", "a\0b", "%c", "%p+", "%g", "[^%w%s]", "^(%S+)%s+(%S+)$",
  }
  local subjects = {
    "", "ok", "not ok", "+PONG", "-PONG", "k=v x_1=2", "xaaayb xy",
    "f(a(b)c)d", "hello world", "abb ab ab", "a1b22", "xxx", "a-b", "]",
    "a\0b", "\0", "z]", "aab", "250 OK", "250-PIPELINING", "3.14 x", "  ",
    "A Bc", "\1\27[31m\255", "220 sonde.test ESMTP", "a)", "ab",
  }

  it("finds what string.find finds, at the same bytes", function()
    local n, diff = 0, {}
    for _, p in ipairs(patterns) do
      assert.is_nil(core.pattern_check(p), p)
      for _, s in ipairs(subjects) do
        n = n + 1
        local a, b = string.find(s, p)
        local c, d = core.pattern_find(s, p)
        if a ~= c or b ~= d then
          diff[#diff + 1] = string.format("%q in %q: lua %s,%s C %s,%s", p, s,
            tostring(a), tostring(b), tostring(c), tostring(d))
        end
      end
    end
    assert.are.same({}, diff)
    assert.are.equal(#patterns * #subjects, n)
  end)

  it("refuses the patterns Lua raises on, with Lua's message", function()
    for _, p in ipairs { "%", "[a", "(a", "(a%1)", "%1", "%b", "%bx", "%f",
        "%fa", "%0", ("()"):rep(33), "[%", "(()", "x)(" } do
      local ok, err = pcall(string.find, "x)(a)", p)
      local msg = core.pattern_check(p)
      assert.is_false(ok, p)
      assert.is_string(msg, p)
      assert.are.equal(err, msg, p)
      assert.has_error(function() core.pattern_find("x", p) end, msg)
    end
  end)

  it("a find that takes too many steps is too complex: bounded work "
    .. "where Lua's own would take minutes", function()
    -- ".-.-X" against 4000 bytes without an X: Lua's matcher tries every
    -- split (about 4000^3 / 6 steps); the budget ends it at 1,000,000
    local s = ("a"):rep(4000)
    local t0 = os.clock()
    for _, p in ipairs { ".-.-X", "a-a-X", "(.-)(.-)X" } do
      assert.has_error(function() core.pattern_find(s, p) end,
        "pattern too complex")
    end
    -- loose by orders of magnitude (each is a few ms; unbounded: minutes)
    assert.is_true(os.clock() - t0 < 10, "took " .. (os.clock() - t0) .. " s")
    -- an ordinary search of a long subject stays well within it
    assert.are.same({ 1, 4001 }, { core.pattern_find(s .. "X", ".-X") })
    assert.are.same({ 1, 4001 }, { core.pattern_find(s .. "X", "^.*X$") })
  end)

  it("a pattern too complex for the subject is an error, as in Lua",
    function()
    local s, p = ("a"):rep(300), ("a?"):rep(250)
    assert.has_error(function() string.find(s, p) end)
    assert.has_error(function() core.pattern_find(s, p) end,
      "pattern too complex")
  end)
end)

describe("core.quote", function()
  it("escapes quotes, backslashes, line ends and bytes outside ASCII",
    function()
    assert.are.equal([["a\"b\\c\r\n\t\x01\xff ok"]],
      core.quote("a\"b\\c\r\n\t\1\255 ok"))
  end)

  it("cuts at max bytes (80 by default) and says so", function()
    assert.are.equal([["xxxxx"...]], core.quote(("x"):rep(100), 5))
    assert.are.equal('"' .. ("y"):rep(80) .. '"...', core.quote(("y"):rep(81)))
    assert.are.equal('"' .. ("y"):rep(80) .. '"', core.quote(("y"):rep(80)))
  end)
end)
