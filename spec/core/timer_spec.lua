-- core.timer against core.now() (CLOCK_MONOTONIC): the loop's event_base
-- has precise timers (src/loop.c, EVENT_BASE_FLAG_PRECISE_TIMER).  With
-- libevent's default coarse clock a timer armed from a callback counted
-- from a time up to a clock tick (1 to 10 ms) old and fired that much
-- before its deadline.  Only earliness is checked: a loaded machine makes
-- timers late, never early.
local core = require "sonde.core"

describe("core.timer", function()
  it("never fires before its deadline, armed from callbacks, many at once", function()
    local delays = { 0.001, 0.0023, 0.005, 0.0077, 0.01 }
    local early, fired = {}, 0
    for chain = 1, 50 do
      local left = 20
      local function arm()
        if left == 0 then return end
        left = left - 1
        local d = delays[(chain + left) % #delays + 1]
        local due = core.now() + d
        core.timer(d, function()
          fired = fired + 1
          local late = core.now() - due
          -- (10 us of slack: libevent counts in whole microseconds)
          if late < -1e-5 then early[#early + 1] = ("%.3f ms"):format(late * 1e3) end
          arm()
        end)
      end
      arm()
    end
    assert.is_true(core.run())
    assert.are.equal(1000, fired)
    assert.are.same({}, early)
  end)
end)
