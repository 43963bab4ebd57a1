-- remediation.lua: actions on state transitions.  When the file that says
-- the application is healthy disappears, the readiness probe goes to
-- failure after 2 runs and sonde calls a webhook (the result as JSON) and
-- runs a command that sees the result in its environment; when the file
-- comes back, on_recovery runs.
--
--   SONDE_FLAG=/tmp/app-ok SONDE_WEBHOOK=http://127.0.0.1:9000/alert \
--     build/bin/sonde examples/remediation.lua
--   (then: rm /tmp/app-ok ... touch /tmp/app-ok)
local sonde = require "sonde"

local flag = os.getenv("SONDE_FLAG") or "/tmp/app-ok"
local webhook = os.getenv("SONDE_WEBHOOK") or "http://127.0.0.1:9000/alert"
local record = os.getenv("SONDE_ACTION_LOG") or "/tmp/sonde-actions.log"

sonde.probe {
  name = "app-flag",
  kind = "readiness",
  exec = { command = { "test", "-f", flag } },
  period = tonumber(os.getenv("SONDE_PERIOD")) or 2,
  failure_threshold = 2,
  action_interval = 0,
  on_failure = {
    sonde.action.webhook { url = webhook },
    sonde.action.exec {
      command = { "sh", "-c",
        'echo "$SONDE_PROBE $SONDE_STATUS $SONDE_REASON" >> "$RECORD"' },
      env = { RECORD = record },
    },
  },
  on_recovery = sonde.action.exec {
    command = { "sh", "-c", 'echo "$SONDE_PROBE recovered" >> "$RECORD"' },
    env = { RECORD = record },
  },
}
