-- core.resolve (src/resolve_op.c): a name's addresses as an operation.
local H = require "helpers"

describe("core.resolve", function()
  it("answers literals, /etc/hosts and unknown names from the loop", function()
    local got = H.run(function()
      local core = require "sonde.core"
      local sonde = require "sonde"
      local out, order = {}, {}
      local function ask(name)
        local returned = false
        core.resolve(name, 2, function(r)
          out[name] = { status = r.status, reason = r.reason, output = r.output,
            after_return = returned }
          order[#order + 1] = name
        end)
        returned = true
      end
      ask("127.0.0.1")
      ask("::1")
      ask("localhost")
      ask("nope.invalid")
      local cancelled = false
      local id = core.resolve("10.0.0.1", 2, function() cancelled = true end)
      out.cancel_ok = core.cancel(id)
      sonde.sleep(0.05)
      out.cancelled = cancelled
      return out
    end, 20)
    assert.are.same({ status = "success", reason = "ok", output = "127.0.0.1\n",
      after_return = true }, got["127.0.0.1"])
    assert.are.equal("::1\n", got["::1"].output)
    assert.are.equal("success", got.localhost.status)
    assert.matches("127%.0%.0%.1\n", got.localhost.output)
    assert.is_true(got.localhost.after_return)
    assert.are.same({ status = "failure", reason = "dns",
      output = "lookup nope.invalid: no such host", after_return = true },
      got["nope.invalid"])
    assert.is_true(got.cancel_ok)
    assert.is_false(got.cancelled)
  end)
end)
