--- Fixed-rate ticks: the schedule of a declared probe.
--
--   local t = ticker.new(period, on_tick [, clock])
--   t:start(first_at)   -- ticks at first_at, first_at + period, ... (monotonic seconds)
--   t:trigger()         -- tick now; the fixed rate restarts from now
--   t:stop()
--
-- Ticks never drift (the k-th tick is due at `first_at + k * period`,
-- whatever the lateness of the ones before) and never stack: a tick that
-- comes late, e.g. after the loop was held up, is followed by the next
-- slot still ahead, and the slots missed meanwhile are skipped (counted in
-- `t.missed`).  `on_tick(t)` runs once per tick; whether a tick starts a
-- run (or is skipped because one is still going) is the caller's choice.
--
-- The arithmetic is the C core's (sonde_next_slot in src/worker.c, which
-- the probes' workers run on the loop); this module runs it on any clock.
-- `clock` is `{ now = fn() -> seconds, after = fn(seconds, cb) -> handle,
-- cancel = fn(handle) }`; the default is the C core's monotonic clock and
-- timers.  Specs pass a fake clock and run without sleeping.
-- @module sonde.ticker
local core = require "sonde.core"

local M = {}

--- The C core's clock: `core.now`, `core.timer`, `core.cancel`.
M.core_clock = { now = core.now, after = core.timer, cancel = core.cancel }

local Ticker = {}
Ticker.__index = Ticker

--- Make a stopped ticker.
-- @tparam number period seconds between ticks, > 0
-- @tparam function on_tick called with the ticker at each tick
-- @tparam[opt] table clock see the module doc
function M.new(period, on_tick, clock)
  return setmetatable({ period = period, on_tick = on_tick,
    clock = clock or M.core_clock, ticks = 0, missed = 0 }, Ticker)
end

function Ticker:arm(at)
  local clock = self.clock
  self.next_at = at
  self.timer = clock.after(math.max(0, at - clock.now()), function()
    self.timer = nil
    self:fire()
  end)
end

-- A tick is due: arm the next slot ahead of now, then call on_tick.
function Ticker:fire()
  local k, missed = core.next_slot(self.first_at, self.period, self.ticks,
    self.clock.now())
  self.missed = self.missed + missed
  self.ticks = k
  self:arm(self.first_at + k * self.period)
  self.on_tick(self)
end

--- Start (or restart) ticking: the first tick at `first_at` (monotonic
-- seconds; now or in the past: at once, from the loop).
function Ticker:start(first_at)
  self:stop()
  self.first_at = first_at
  self.ticks = 0
  self:arm(first_at)
end

--- Tick now (from the loop, not inside this call) and count the fixed
-- rate from now on (the kubelet's manual trigger resets its ticker).
function Ticker:trigger()
  self:start(self.clock.now())
end

--- Stop ticking; a pending tick is cancelled.  Idempotent.
function Ticker:stop()
  if self.timer then self.clock.cancel(self.timer) end
  self.timer = nil
  self.next_at = nil
end

--- True while started.
function Ticker:active() return self.timer ~= nil end

--- Offsets that spread `n` probes starting together over their period:
-- the i-th (1-based) of n starts `(i - 1) / n * period` late.
function M.spread(i, n, period)
  return (i - 1) / n * period
end

return M
