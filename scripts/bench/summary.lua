-- wrk hook for scripts/bench.sh: after the run, print one machine-readable
-- line with the raw totals, so the bench script does not have to parse
-- wrk's human-oriented (and unit-rounded) summary.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"duration_us":%.0f,"requests":%.0f,"bytes":%.0f,' ..
    '"err_connect":%.0f,"err_read":%.0f,"err_write":%.0f,' ..
    '"err_status":%.0f,"err_timeout":%.0f,' ..
    '"lat_p50_us":%.0f,"lat_p99_us":%.0f}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
