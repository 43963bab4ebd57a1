-- busted output handler: busted's own plainTerminal output (progress dots,
-- failure and error details, busted's status line), then, as the very last
-- line of the run, a summary that CI recognises:
--
--   57 passed, 0 failed
--   55 passed, 2 failed, 3 skipped     (", N skipped" only when some are pending)
--
-- Errors (a test or a describe/file block that raised) count as failed.  With
-- --repeat the counts are summed over all runs.  The process exits non-zero
-- when anything failed (busted's runner does so too; this makes it certain).
--
-- Use: `output = "spec/support/summary.lua"` in .busted, or
--      `busted -o spec/support/summary.lua`.
return function(options)
  local busted = require "busted"
  local handler = require "busted.outputHandlers.plainTerminal"(options)

  local passed, failed, skipped = 0, 0, 0

  -- Subscribed after plainTerminal's own suite-end handler (same priority),
  -- so the counts are final when this runs.  The base handler resets its
  -- counts at each 'suite reset' (--repeat), hence the running totals.
  busted.subscribe({ "suite", "end" }, function()
    passed = passed + handler.successesCount
    failed = failed + handler.failuresCount + handler.errorsCount
    skipped = skipped + handler.pendingsCount
    return nil, true
  end)

  busted.subscribe({ "exit" }, function()
    -- Errors raised outside any suite run (e.g. a spec file that does not
    -- load while nothing ran) still land in handler.errors.
    if passed + failed + skipped == 0 then
      failed = handler.failuresCount + handler.errorsCount
    end
    local line = string.format("%d passed, %d failed", passed, failed)
    if skipped > 0 then
      line = line .. string.format(", %d skipped", skipped)
    end
    io.stdout:write("\n", line, "\n")
    io.stdout:flush()
    io.stderr:flush()
    if failed > 0 then
      os.exit(1, true)
    end
    return nil, true
  end)

  return handler
end
