-- wrk script for part B of scripts/load.sh (a copy of scripts/bench/summary.lua
-- with its own prefix): no per-request callback, so that wrk costs as little
-- CPU as possible; after the run it prints one machine-readable line with the
-- raw totals.  err_status counts answers with a status of 400 or more; wrk
-- counts a 1xx/3xx as a success, which is why load.sh checks each target's
-- answer (status 200 and the pushed bytes) with curl before and after timing.
-- LOAD_AUTHORIZATION, if set and not empty, is sent as the Authorization
-- header (so a token stays off the command line, which stays the same).
init = function(args)
  local auth = os.getenv("LOAD_AUTHORIZATION")
  if auth and auth ~= "" then
    wrk.headers["Authorization"] = auth
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'LOAD_RESULT {"duration_us":%.0f,"requests":%.0f,"bytes":%.0f,' ..
    '"err_connect":%.0f,"err_read":%.0f,"err_write":%.0f,' ..
    '"err_status":%.0f,"err_timeout":%.0f,' ..
    '"lat_p50_us":%.0f,"lat_p99_us":%.0f}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
