-- sonde.expand(str, env): Kubernetes `$(VAR)` expansion
-- (third_party/forked/golang/expansion; reference/kubelet-probes.md section 7).
local sonde = require "sonde"

local mapping = {
  VAR_A = "A",
  VAR_B = "B",
  VAR_C = "C",
  VAR_REF = "$(VAR_A)",
  VAR_EMPTY = "",
}

-- expand_test.go doExpansionTest; strings are raw ([[...]] keeps `\` as one
-- backslash).
local vectors = {
  { "whole string", [[$(VAR_A)]], [[A]] },
  { "repeat", [[$(VAR_A)-$(VAR_A)]], [[A-A]] },
  { "beginning", [[$(VAR_A)-1]], [[A-1]] },
  { "middle", [[___$(VAR_B)___]], [[___B___]] },
  { "end", [[___$(VAR_C)]], [[___C]] },
  { "compound", [[$(VAR_A)_$(VAR_B)_$(VAR_C)]], [[A_B_C]] },
  { "escape & expand", [[$$(VAR_B)_$(VAR_A)]], [[$(VAR_B)_A]] },
  { "compound escape", [[$$(VAR_A)_$$(VAR_B)]], [[$(VAR_A)_$(VAR_B)]] },
  { "mixed in escapes", [[f000-$$VAR_A]], [[f000-$VAR_A]] },
  { "backslash escape ignored", [[foo\$(VAR_C)bar]], [[foo\Cbar]] },
  { "backslash escape ignored (2)", [[foo\\$(VAR_C)bar]], [[foo\\Cbar]] },
  { "lots of backslashes", [[foo\\\\$(VAR_A)bar]], [[foo\\\\Abar]] },
  { "nested var references", [[$(VAR_A$(VAR_B))]], [[$(VAR_A$(VAR_B))]] },
  { "nested var references, second type", [[$(VAR_A$(VAR_B)]], [[$(VAR_A$(VAR_B)]] },
  { "value is a reference", [[$(VAR_REF)]], [[$(VAR_A)]] },
  { "value is a reference x 2", [[%%$(VAR_REF)--$(VAR_REF)%%]], [[%%$(VAR_A)--$(VAR_A)%%]] },
  { "empty var", [[foo$(VAR_EMPTY)bar]], [[foobar]] },
  { "unterminated expression", [[foo$(VAR_Awhoops!]], [[foo$(VAR_Awhoops!]] },
  { "expression without operator", [[f00__(VAR_A)__]], [[f00__(VAR_A)__]] },
  { "shell special vars pass through", [[$?_boo_$!]], [[$?_boo_$!]] },
  { "bare operators are ignored", [[$VAR_A]], [[$VAR_A]] },
  { "undefined vars are passed through", [[$(VAR_DNE)]], [[$(VAR_DNE)]] },
  { "multiple (even) operators, var undefined", [[$$$$$$(BIG_MONEY)]], [[$$$(BIG_MONEY)]] },
  { "multiple (even) operators, var defined", [[$$$$$$(VAR_A)]], [[$$$(VAR_A)]] },
  { "multiple (odd) operators, var undefined", [[$$$$$$$(GOOD_ODDS)]], [[$$$$(GOOD_ODDS)]] },
  { "multiple (odd) operators, var defined", [[$$$$$$$(VAR_A)]], [[$$$A]] },
  { "missing open expression", [[$VAR_A)]], [[$VAR_A)]] },
  { "shell syntax ignored", [[${VAR_A}]], [[${VAR_A}]] },
  { "trailing incomplete expression not consumed", [[$(VAR_B)_______$(A]], [[B_______$(A]] },
  { "trailing incomplete expression, no content", [[$(VAR_C)_______$(]], [[C_______$(]] },
  { "operator at end of input is preserved", [[$(VAR_A)foobarzab$]], [[Afoobarzab$]] },
  { "shell escaped incomplete expr", [[foo-\$(VAR_A]], [[foo-\$(VAR_A]] },
  { "lots of $( in middle", [[--$($($($($--]], [[--$($($($($--]] },
  { "lots of $( at beginning", [[$($($($($--foo$(]], [[$($($($($--foo$(]] },
  { "lots of $( at end", [[foo0--$($($($(]], [[foo0--$($($($(]] },
  { "escaped operators in variable names are not escaped", [[$(foo$$var)]], [[$(foo$$var)]] },
  { "newline not expanded", "\n", "\n" },
}

describe("sonde.expand", function()
  it("has all 37 upstream vectors", function()
    assert.are.equal(37, #vectors)
  end)

  describe("upstream vectors", function()
    for i, v in ipairs(vectors) do
      local name, input, want = v[1], v[2], v[3]
      it(string.format("#%d %s: %q", i, name, input), function()
        assert.are.equal(want, sonde.expand(input, mapping))
      end)
    end
  end)

  -- name, then { input, env (nil: mapping), want } cases
  local derived = {
    { "empty input", { { "", nil, "" }, { "", {}, "" } } },
    { "a lone $", { { "$", nil, "$" } } },
    { "$$ is one $", { { "$$", nil, "$" } } },
    { "$$$ is $$", { { "$$$", nil, "$$" } } },
    { "$() without an empty-name key stays", { { "$()", nil, "$()" } } },
    { "$() with an empty-name key is replaced", { { "$()", { [""] = "E" }, "E" } } },
    { "adjacent references", { { "$(A)$(B)", { A = "1", B = "2" }, "12" } } },
    { "a value containing ) is inserted verbatim", { { "$(A)", { A = "x)y" }, "x)y" } } },
    { "the name runs to the first )", { { "$($(VAR_A)", nil, "$($(VAR_A)" } } },
    { "a name with a space is looked up as is", { { "a$(VAR_A b)c", nil, "a$(VAR_A b)c" } } },
    { "a multibyte rune after $ is copied intact", { { "$é", nil, "$é" } } },
    { "an invalid UTF-8 byte after $ is copied through (no U+FFFD)", {
      { "$\255", nil, "$\255" }, { "a$\255b$$(VAR_A)", nil, "a$\255b$(VAR_A)" } } },
    { "embedded NUL bytes survive", { { "a\0$(VAR_A)\0b", nil, "a\0A\0b" },
      { "$(N)", { N = "\0" }, "\0" }, { "$(N\0M)", { ["N\0M"] = "x" }, "x" } } },
  }

  describe("derived vectors", function()
    for _, d in ipairs(derived) do
      it(d[1], function()
        for _, c in ipairs(d[2]) do
          assert.are.equal(c[3], sonde.expand(c[1], c[2] or mapping))
        end
      end)
    end

    it("ordered env: each entry expands against the earlier results", function()
      local decl = { { "FOO", "bar" }, { "ZOO", "$(FOO)-1" }, { "BLU", "$(ZOO)-2" } }
      local env = {}
      for _, kv in ipairs(decl) do
        env[kv[1]] = sonde.expand(kv[2], env)
      end
      assert.are.same({ FOO = "bar", ZOO = "bar-1", BLU = "bar-1-2" }, env)
    end)

    it("a long input with many references", function()
      local input = string.rep("$(VAR_A)$$-", 10000)
      assert.are.equal(string.rep("A$-", 10000), sonde.expand(input, mapping))
    end)
  end)

  describe("arguments", function()
    it("rejects a table as the string", function()
      assert.has_error(function() sonde.expand({}, {}) end)
    end)

    it("rejects a non-table env", function()
      assert.has_error(function() sonde.expand("x", "notatable") end)
    end)
  end)
end)
