-- sonde.ticker: fixed-rate ticks.  Almost everything runs on a fake clock
-- written here (no sleeping); one test uses the C core's real clock.
--
-- All times below are exact in binary floating point (multiples of 1/8),
-- so slots can be compared with `equal`.
local ticker = require "sonde.ticker"

-- A fake clock: `now()` returns `c.t`; `after(delay, cb)` records
-- { at = now + delay, cb } and returns it as the handle; `cancel(h)`
-- removes it.  `c.advance(to, late)` fires the due timers in order of
-- their time (then of arming), each with the clock set to its time plus
-- `late(at)` seconds (a fire that comes late), then sets the clock to `to`.
local function fake_clock(t0)
  local c = { t = t0 or 0, timers = {}, seq = 0, armed = {}, cancels = 0 }

  function c.now() return c.t end

  function c.after(delay, cb)
    assert(type(delay) == "number" and delay >= 0, "bad delay")
    c.seq = c.seq + 1
    local h = { at = c.t + delay, cb = cb, seq = c.seq }
    c.timers[#c.timers + 1] = h
    c.armed[#c.armed + 1] = h.at
    return h
  end

  function c.cancel(h)
    c.cancels = c.cancels + 1
    for i, x in ipairs(c.timers) do
      if x == h then table.remove(c.timers, i); return true end
    end
    return false
  end

  local function earliest()
    local best
    for _, h in ipairs(c.timers) do
      if not best or h.at < best.at or (h.at == best.at and h.seq < best.seq)
      then best = h end
    end
    return best
  end

  function c.advance(to, late)
    local fires = 0
    while true do
      local h = earliest()
      if not h or h.at > to then break end
      fires = fires + 1
      assert(fires <= 100000, "timers keep firing at " .. c.t)
      c.cancel(h)
      c.cancels = c.cancels - 1          -- firing is not cancelling
      local at = h.at + (late and late(h.at) or 0)
      if at > c.t then c.t = at end
      h.cb()
    end
    if to > c.t then c.t = to end
  end

  -- the pending timers' times, in order
  function c.pending()
    local l = {}
    for _, h in ipairs(c.timers) do l[#l + 1] = h.at end
    table.sort(l)
    return l
  end

  return c
end

-- A ticker on a fake clock that records the time of each tick.
local function recorded(period, clock, on_tick)
  local ticks = {}
  local t = ticker.new(period, function(tk)
    ticks[#ticks + 1] = clock.now()
    if on_tick then on_tick(tk) end
  end, clock)
  return t, ticks
end

-- A ticker on a fake clock at t0 (default 0), started at first_at:
-- clock, ticker, ticks.
local function started(period, first_at, t0, on_tick)
  local c = fake_clock(t0)
  local t, ticks = recorded(period, c, on_tick)
  t:start(first_at)
  return c, t, ticks
end

-- Check those of want's fields that are given: the ticks so far, the
-- pending timers' times, the missed count, whether the ticker is active.
local function expect(c, t, ticks, want)
  if want.ticks then assert.same(want.ticks, ticks) end
  if want.pending then assert.same(want.pending, c.pending()) end
  if want.missed then assert.equal(want.missed, t.missed) end
  if want.active ~= nil then assert.equal(want.active, t:active()) end
end

describe("sonde.ticker (fake clock)", function()
  it("ticks first exactly at first_at, not before, not inside start",
    function()
    local c = fake_clock(100)
    local t, ticks = recorded(2, c)
    assert.is_false(t:active())
    t:start(105)
    expect(c, t, ticks, { active = true, ticks = {}, pending = { 105 } })
    c.advance(104.875)
    assert.same({}, ticks)
    c.advance(105)
    expect(c, t, ticks, { ticks = { 105 }, pending = { 107 } })
  end)

  it("a first_at now or in the past ticks at the next fire, once",
    function()
    local c, t, ticks = started(4, 50, 50)
    -- from the loop, not inside start
    expect(c, t, ticks, { ticks = {}, pending = { 50 } })
    c.advance(50)
    expect(c, t, ticks, { ticks = { 50 }, pending = { 54 } })
  end)

  it("ticks at first_at + k * period", function()
    local c, t, ticks = started(2.5, 10)
    c.advance(30)
    expect(c, t, ticks, { missed = 0,
      ticks = { 10, 12.5, 15, 17.5, 20, 22.5, 25, 27.5, 30 } })
    assert.same({ 10, 12.5, 15, 17.5, 20, 22.5, 25, 27.5, 30, 32.5 }, c.armed)
    assert.equal(32.5, t.next_at)
  end)

  -- Each of `n` slots from `first` every `period` was armed for itself
  -- (not for the last fire + period), and its tick came at slot + late(k).
  local function slots_kept(c, ticks, n, first, period, late)
    assert.equal(n, #ticks)
    for k = 0, n - 1 do
      assert.equal(first + k * period, c.armed[k + 1])
      if late then assert.equal(first + k * period + late(k), ticks[k + 1]) end
    end
  end

  it("does not drift when every fire comes late", function()
    local c, t, ticks = started(2, 10)
    -- each fire late by a jitter between 0 and 1.75 s (under a period)
    local n = 0
    c.advance(10 + 999 * 2 + 1.9, function()
      n = n + 1
      return (n * 3 % 8) * 0.25
    end)
    slots_kept(c, ticks, 1000, 10, 2, function(k) return ((k + 1) * 3 % 8) * 0.25 end)
    expect(c, t, ticks, { pending = { 10 + 1000 * 2 }, missed = 0 })
  end)

  it("a period not exact in binary ticks once per slot", function()
    local c, t, ticks = started(0.1, 0.3)
    c.advance(0.3 + 999 * 0.1 + 0.05)
    slots_kept(c, ticks, 1000, 0.3, 0.1)
    expect(c, t, ticks, { missed = 0, pending = { 0.3 + 1000 * 0.1 } })
  end)

  it("a fire that comes early (a coarse timer clock) ticks once per slot",
    function()
    local c, t, ticks = started(2, 10)
    -- every fire 1/1024 s before its time (the clock does not go back)
    c.advance(10 + 9 * 2, function() return -1 / 1024 end)
    slots_kept(c, ticks, 10, 10, 2, function() return -1 / 1024 end)
    expect(c, t, ticks, { missed = 0, pending = { 30 } })
  end)

  it("a fire 3.5 periods late arms the next slot ahead and counts the "
    .. "missed ones, ticking once", function()
    local c, t, ticks = started(2, 10)
    c.advance(10)
    expect(c, t, ticks, { ticks = { 10 }, pending = { 12 } })
    -- the loop is held up: the slot of 12 fires at 19
    c.advance(12, function(at) return at == 12 and 7 or 0 end)
    assert.equal(19, c.t)
    -- one tick, not four; slots 14, 16, 18 missed; the next slot still ahead
    expect(c, t, ticks, { ticks = { 10, 19 }, missed = 3, pending = { 20 } })
    assert.equal(20, t.next_at)
    c.advance(19.875)
    assert.same({ 10, 19 }, ticks)  -- nothing more at once
    c.advance(24)
    expect(c, t, ticks, { ticks = { 10, 19, 20, 22, 24 }, missed = 3 })
  end)

  it("a fire late by exactly whole periods skips those slots", function()
    local c, t, ticks = started(1, 0)
    c.advance(0)
    c.advance(1, function(at) return at == 1 and 2 or 0 end)   -- at 3
    -- one tick at 3 for the slots of 1, 2 and 3: two of them missed
    expect(c, t, ticks, { ticks = { 0, 3 }, missed = 2, pending = { 4 } })
  end)

  it("trigger ticks at the next fire and restarts the rate from then",
    function()
    local c, t, ticks = started(4, 0)
    c.advance(9)
    expect(c, t, ticks, { ticks = { 0, 4, 8 }, pending = { 12 } })
    t:trigger()
    -- not inside trigger; the slot of 12 is cancelled
    expect(c, t, ticks, { ticks = { 0, 4, 8 }, pending = { 9 }, active = true })
    c.advance(9)
    expect(c, t, ticks, { ticks = { 0, 4, 8, 9 }, pending = { 13 } })
    c.advance(21.875)
    expect(c, t, ticks, { ticks = { 0, 4, 8, 9, 13, 17, 21 }, missed = 0 })
  end)

  it("trigger twice before the loop runs ticks once", function()
    local c, t, ticks = started(4, 0)
    c.advance(1)
    t:trigger()
    t:trigger()
    assert.same({ 1 }, c.pending())
    c.advance(4.875)
    assert.same({ 0, 1 }, ticks)
  end)

  it("stop cancels the pending timer and is idempotent", function()
    local c, t, ticks = started(1, 0)
    c.advance(2.5)
    expect(c, t, ticks, { ticks = { 0, 1, 2 }, pending = { 3 } })
    t:stop()
    expect(c, t, ticks, { active = false, pending = {} })
    assert.is_nil(t.next_at)
    assert.equal(1, c.cancels)
    t:stop()
    t:stop()
    assert.equal(1, c.cancels)      -- nothing more to cancel
    c.advance(10)
    expect(c, t, ticks, { active = false, ticks = { 0, 1, 2 } })
  end)

  it("stop before start does nothing", function()
    local c = fake_clock(0)
    local t = recorded(1, c)
    t:stop()
    assert.equal(0, c.cancels)
    assert.is_false(t:active())
  end)

  it("stop from inside on_tick ends the ticks", function()
    local ticks
    local c, t
    c, t, ticks = started(1, 0, 0, function(tk)
      if #ticks == 3 then tk:stop() end
    end)
    c.advance(10)
    expect(c, t, ticks, { ticks = { 0, 1, 2 }, active = false, pending = {} })
  end)

  it("active while started, also between ticks", function()
    local c = fake_clock(0)
    local seen = {}
    local t
    t = recorded(1, c, function(tk) seen[#seen + 1] = tk:active() end)
    assert.is_false(t:active())
    t:start(1)
    assert.is_true(t:active())
    c.advance(3.5)
    assert.same({ true, true, true }, seen)   -- the next slot is armed first
    assert.is_true(t:active())
    t:stop()
    assert.is_false(t:active())
  end)

  it("start again restarts from the new first_at", function()
    local c, t, ticks = started(2, 0)
    c.advance(3)
    t:start(7)
    assert.same({ 7 }, c.pending())
    c.advance(11)
    expect(c, t, ticks, { ticks = { 0, 2, 7, 9, 11 }, missed = 0 })
  end)

  it("calls on_tick with the ticker", function()
    local c = fake_clock(0)
    local got
    local t = ticker.new(1, function(tk) got = tk end, c)
    t:start(0)
    c.advance(0)
    assert.equal(t, got)
  end)
end)

describe("sonde.ticker.spread", function()
  it("spreads n starts over the period", function()
    assert.equal(0, ticker.spread(1, 4, 10))
    assert.equal(2.5, ticker.spread(2, 4, 10))
    assert.equal(5, ticker.spread(3, 4, 10))
    assert.equal(7.5, ticker.spread(4, 4, 10))
    assert.equal(0, ticker.spread(1, 1, 5))
    assert.equal(1, ticker.spread(2, 3, 3))
    for i = 1, 16 do
      local d = ticker.spread(i, 16, 8)
      assert.equal((i - 1) * 0.5, d)
      assert.is_true(d >= 0 and d < 8)
    end
  end)
end)

describe("sonde.ticker (core clock)", function()
  it("a 0.05 s ticker ticks 3 times in a loop run", function()
    local core = require "sonde.core"
    assert.equal(core.now, ticker.core_clock.now)
    local times = {}
    local t
    local guard           -- stops everything if the ticks never come
    guard = core.timer(5, function() guard = nil; t:stop() end)
    t = ticker.new(0.05, function(tk)
      times[#times + 1] = core.now()
      if #times == 3 then
        core.timer(0, function()
          tk:stop()
          if guard then core.cancel(guard); guard = nil end
        end)
      end
    end)
    assert.equal(ticker.core_clock, t.clock)
    local t0 = core.now()
    t:start(t0)
    core.run()
    assert.equal(3, #times)
    assert.is_false(t:active())
    -- loose bounds: slots at t0, t0 + 0.05, t0 + 0.1, none early by more
    -- than a timer's granularity, all done well within the guard
    for k = 1, 3 do
      assert.is_true(times[k] >= t0 + (k - 1) * 0.05 - 0.005,
        ("tick %d at %.4f, slot %.4f"):format(k, times[k] - t0,
          (k - 1) * 0.05))
    end
    assert.is_true(times[3] - t0 < 2, "too slow: " .. (times[3] - t0))
    assert.is_true(core.now() - t0 < 4)
  end)
end)
