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

  describe("derived vectors", function()
    it("empty input", function()
      assert.are.equal("", sonde.expand("", mapping))
      assert.are.equal("", sonde.expand("", {}))
    end)

    it("a lone $", function()
      assert.are.equal("$", sonde.expand("$", mapping))
    end)

    it("$$ is one $", function()
      assert.are.equal("$", sonde.expand("$$", mapping))
    end)

    it("$$$ is $$", function()
      assert.are.equal("$$", sonde.expand("$$$", mapping))
    end)

    it("$() without an empty-name key stays", function()
      assert.are.equal("$()", sonde.expand("$()", mapping))
    end)

    it("$() with an empty-name key is replaced", function()
      assert.are.equal("E", sonde.expand("$()", { [""] = "E" }))
    end)

    it("adjacent references", function()
      assert.are.equal("12", sonde.expand("$(A)$(B)", { A = "1", B = "2" }))
    end)

    it("a value containing ) is inserted verbatim", function()
      assert.are.equal("x)y", sonde.expand("$(A)", { A = "x)y" }))
    end)

    it("the name runs to the first )", function()
      assert.are.equal("$($(VAR_A)", sonde.expand("$($(VAR_A)", mapping))
    end)

    it("a name with a space is looked up as is", function()
      assert.are.equal("a$(VAR_A b)c", sonde.expand("a$(VAR_A b)c", mapping))
    end)

    it("a multibyte rune after $ is copied intact", function()
      assert.are.equal("$é", sonde.expand("$é", mapping))
    end)

    it("an invalid UTF-8 byte after $ is copied through (no U+FFFD)", function()
      assert.are.equal("$\255", sonde.expand("$\255", mapping))
      assert.are.equal("a$\255b$(VAR_A)", sonde.expand("a$\255b$$(VAR_A)", mapping))
    end)

    it("ordered env: each entry expands against the earlier results", function()
      local decl = { { "FOO", "bar" }, { "ZOO", "$(FOO)-1" }, { "BLU", "$(ZOO)-2" } }
      local env = {}
      for _, kv in ipairs(decl) do
        env[kv[1]] = sonde.expand(kv[2], env)
      end
      assert.are.same({ FOO = "bar", ZOO = "bar-1", BLU = "bar-1-2" }, env)
    end)

    it("embedded NUL bytes survive", function()
      assert.are.equal("a\0A\0b", sonde.expand("a\0$(VAR_A)\0b", mapping))
      assert.are.equal("\0", sonde.expand("$(N)", { N = "\0" }))
      assert.are.equal("x", sonde.expand("$(N\0M)", { ["N\0M"] = "x" }))
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
