-- sonde.json: the one JSON encoder.  Exact texts, and every text checked
-- by an independent decoder (lua-cjson) where a Lua value can round-trip.
local json = require "sonde.json"
local helpers = require "helpers"

-- Encode v; the text must decode with cjson.  Returns text and decoded.
local function enc(v)
  local s = json.encode(v)
  assert.is_string(s)
  local d, err = helpers.json_decode(s)
  assert(d ~= nil, "cjson cannot decode " .. s .. ": " .. tostring(err))
  return s, d
end

-- v encodes to exactly `text`, which decodes back to v (or to `back`).
local function round(v, text, back)
  local s, d = enc(v)
  assert.equal(text, s)
  if back == nil then back = v end
  assert.same(back, d)
end

describe("sonde.json strings", function()
  it("plain text as is", function()
    round("", '""')
    round("hello, world / ok", '"hello, world / ok"')
    assert.equal('"a"', json.string("a"))
  end)

  it("escapes quotes and backslashes", function()
    round('say "hi"', [["say \"hi\""]])
    round("C:\\dir\\", [["C:\\dir\\"]])
    round('\\"', [["\\\""]])
  end)

  it("escapes control characters", function()
    round("a\nb\rc\td", [["a\nb\rc\td"]])
    round("\1", [["\u0001"]])
    round("\0", [["\u0000"]])
    round("\31\27", [["\u001f\u001b"]])
    round("\8\12", [["\u0008\u000c"]])
    round("x\127y", [["x\u007fy"]])
  end)

  it("keeps valid multibyte UTF-8", function()
    round("caf\195\169", '"caf\195\169"')                  -- é
    round("\226\130\172 5", '"\226\130\172 5"')             -- €
    round("\240\159\152\128", '"\240\159\152\128"')         -- U+1F600
    round("\244\143\191\191", '"\244\143\191\191"')         -- U+10FFFF
    round("\194\128\239\191\189", '"\194\128\239\191\189"') -- U+80 U+FFFD
    round("\226\130\172\n\"", '"\226\130\172\\n\\""')
  end)

  it("turns each invalid UTF-8 byte into the text \\xHH", function()
    round("\255", [["\\xFF"]], "\\xFF")
    round("a\255b", [["a\\xFFb"]], "a\\xFFb")
    round("\128", [["\\x80"]], "\\x80")
    -- truncated sequence (a euro sign without its last byte), at the end
    round("\226\130", [["\\xE2\\x82"]], "\\xE2\\x82")
    -- truncated in the middle: the next valid character is kept
    round("\226\130a\195\169", [["\\xE2\\x82a]] .. "\195\169" .. '"',
      "\\xE2\\x82a\195\169")
    -- overlong encoding of "/", a UTF-16 surrogate, above U+10FFFF
    round("\192\175", [["\\xC0\\xAF"]], "\\xC0\\xAF")
    round("\237\160\128", [["\\xED\\xA0\\x80"]], "\\xED\\xA0\\x80")
    round("\244\144\128\128", [["\\xF4\\x90\\x80\\x80"]],
      "\\xF4\\x90\\x80\\x80")
    round("\248\136\128\128\128", [["\\xF8\\x88\\x80\\x80\\x80"]],
      "\\xF8\\x88\\x80\\x80\\x80")
    -- invalid bytes next to control characters and quotes
    round("\1\255\"", [["\u0001\\xFF\""]], "\1\\xFF\"")
  end)

  it("is linear enough for a long binary blob", function()
    local parts = {}
    for i = 0, 255 do parts[#parts + 1] = string.char(i) end
    local all = table.concat(parts)
    local s, d = enc(all:rep(200))
    assert.equal(#json.encode(all) * 200 - 2 * 199, #s)
    assert.is_string(d)
  end)

  it("escapes keys too", function()
    round({ ['a"b'] = 1 }, [[{"a\"b":1}]])
    round({ ["\255"] = 1 }, [[{"\\xFF":1}]], { ["\\xFF"] = 1 })
  end)

  it("escaper takes other formats", function()
    local esc = json.escaper("<%d>", "[%02x]")
    assert.equal("a<1>[ff]\\n\\\"", esc('a\1\255\n"'))
    assert.equal("plain", esc("plain"))
  end)
end)

describe("sonde.json numbers", function()
  it("integers", function()
    round(0, "0")
    round(-5, "-5")
    round(123456789, "123456789")
    assert.equal("9223372036854775807", json.encode(math.maxinteger))
    assert.equal("-9223372036854775808", json.encode(math.mininteger))
    enc(math.maxinteger)
    enc(math.mininteger)
  end)

  it("floats with an integer value are written without a fraction", function()
    round(3.0, "3")
    round(-2.0, "-2")
    round(1e15, "1000000000000000")
  end)

  it("floats round-trip exactly", function()
    for _, x in ipairs { 0.1, -2.5, 1 / 3, math.pi, 1e300, -1e-300, 5e-324,
                         1.5e-10, 2.0 ^ 53, 2.0 ^ 70, 123.456, 0.30000000000000004 } do
      local s, d = enc(x)
      assert.is_truthy(s:match("^%-?%d[%d.e+-]*$"), s)
      assert.equal(x, d)
    end
    round(0.5, "0.5")
    round(-2.5, "-2.5")
  end)

  it("NaN and infinities are null", function()
    local nan = 0 / 0
    assert.equal("null", json.encode(nan))
    assert.equal("null", json.encode(-nan))
    assert.equal("null", json.encode(math.huge))
    assert.equal("null", json.encode(-math.huge))
    local s, d = enc({ 1, nan, math.huge, -math.huge, 2 })
    assert.equal("[1,null,null,null,2]", s)
    assert.equal(helpers.null, d[2])
    assert.equal(helpers.null, d[4])
    assert.equal(2, d[5])
  end)
end)

describe("sonde.json values", function()
  it("booleans and nil", function()
    round(true, "true")
    round(false, "false")
    assert.equal("null", json.encode(nil))
    round({ a = false, b = true }, '{"a":false,"b":true}')
  end)

  it("functions and other values are their tostring text", function()
    local f = function() end
    round(f, json.string(tostring(f)), tostring(f))
    local co = coroutine.create(f)
    round(co, json.string(tostring(co)), tostring(co))
  end)
end)

describe("sonde.json tables", function()
  it("keys 1..n are an array", function()
    round({ 1, 2, 3 }, "[1,2,3]")
    round({ "a" }, '["a"]')
    round({ "x", { 1, { 2 } }, true }, '["x",[1,[2]],true]')
  end)

  it("an empty table is {}", function()
    round({}, "{}")
    round({ list = {} }, '{"list":{}}')
  end)

  it("holes make an object", function()
    round({ 1, nil, 3 }, '{"1":1,"3":3}', { ["1"] = 1, ["3"] = 3 })
    round({ [1] = 1, [2] = 2, [4] = 4 }, '{"1":1,"2":2,"4":4}',
      { ["1"] = 1, ["2"] = 2, ["4"] = 4 })
    round({ [2] = "b" }, '{"2":"b"}', { ["2"] = "b" })
  end)

  it("other keys make an object", function()
    round({ 1, 2, x = 3 }, '{"1":1,"2":2,"x":3}',
      { ["1"] = 1, ["2"] = 2, x = 3 })
    round({ [0] = "z", "a" }, '{"0":"z","1":"a"}', { ["0"] = "z", ["1"] = "a" })
    round({ [1.5] = "f" }, '{"1.5":"f"}', { ["1.5"] = "f" })
    round({ [true] = 1 }, '{"true":1}', { ["true"] = 1 })
  end)

  it("an array with a hole and another key is an object", function()
    round({ "a", "b", nil, "d", x = 1 }, '{"1":"a","2":"b","4":"d","x":1}',
      { ["1"] = "a", ["2"] = "b", ["4"] = "d", x = 1 })
    round({ 1, nil, 3, x = 1 }, '{"1":1,"3":3,"x":1}',
      { ["1"] = 1, ["3"] = 3, x = 1 })
  end)

  it("of two keys that print alike, keeps the string key", function()
    assert.equal('{"1":"b"}', json.encode({ [1] = "a", ["1"] = "b" }))
  end)

  it("sorts object keys (as strings)", function()
    round({ b = 1, a = 2, c = { z = 1, y = 2 } },
      '{"a":2,"b":1,"c":{"y":2,"z":1}}')
    round({ [10] = 1, [9] = 2, x = 3, B = 4 }, '{"10":1,"9":2,"B":4,"x":3}',
      { ["10"] = 1, ["9"] = 2, x = 3, B = 4 })
    local t = {}
    for i = 1, 50 do t["k" .. (i * 7919 % 50)] = i end
    local s = json.encode(t)
    assert.equal(s, json.encode(t))
    local names = {}
    for k in s:gmatch('"(k%d+)":') do names[#names + 1] = k end
    assert.equal(50, #names)
    local sorted = { table.unpack(names) }
    table.sort(sorted)
    assert.same(sorted, names)
    local _, d = enc(t)
    assert.same(t, d)
  end)

  it("a table inside itself is \"(cycle)\"", function()
    local t = { name = "a" }
    t.self = t
    round(t, '{"name":"a","self":"(cycle)"}', { name = "a", self = "(cycle)" })
    local a, b = {}, {}
    a.b, b.a = b, a
    a.list = { a, { b } }
    round(a, '{"b":{"a":"(cycle)"},"list":["(cycle)",[{"a":"(cycle)"}]]}',
      { b = { a = "(cycle)" }, list = { "(cycle)", { { a = "(cycle)" } } } })
    local r = {}
    r[1] = r
    round(r, '["(cycle)"]', { "(cycle)" })
  end)

  it("a table met twice but not inside itself is written twice", function()
    local s = { 1, 2 }
    round({ x = s, y = s, z = { s } }, '{"x":[1,2],"y":[1,2],"z":[[1,2]]}')
  end)

  it("round-trips a nested value", function()
    local v = {
      name = "web-live", kind = "liveness", ok = true, failed = false,
      duration = 0.0123, exit_code = 1, list = { 1, 2.5, "three", true },
      nested = { a = { b = { c = "d", e = {} } } },
      output = "caf\195\169 \226\130\172\n\t\"quoted\" \\ \1",
    }
    local s, d = enc(v)
    assert.same(v, d)
    assert.equal(s, json.encode(v))
    assert.equal('{"duration":', s:sub(1, 12))
  end)
end)

describe("sonde.json whatever the bytes", function()
  local json = require "sonde.json"

  it("random byte strings encode to valid UTF-8 that decodes back", function()
    math.randomseed(4)
    for _ = 1, 500 do
      local t = {}
      for i = 1, math.random(0, 40) do t[i] = string.char(math.random(0, 255)) end
      local s = table.concat(t)
      local text = json.encode({ [s] = s })
      assert.is_truthy(utf8.len(text), string.format("%q", s))
      assert.is_nil(text:find("%c"), string.format("%q", text))
      local v = helpers.json_decode(text)
      assert.is_table(v, text)
      -- valid input comes back as it was
      if utf8.len(s) and not s:find("%c") then assert.are.equal(s, v[s]) end
    end
  end)

  it("valid_utf8 replaces each invalid byte, and is s itself when valid",
    function()
    local s = "plain ascii"
    assert.are.equal(s, json.valid_utf8(s))
    assert.are.equal("a\239\191\189\239\191\189b", json.valid_utf8("a\192\128b"))
    assert.are.equal("a?b", json.valid_utf8("a\255b", "?"))
  end)
end)
