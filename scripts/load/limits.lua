-- wrk script for part A of scripts/load.sh: every request is a GET of the
-- same manifest carrying "X-Forwarded-For: <address>", and every answer is
-- counted per simulated client address as 200, 429 or other.
--
-- Why one address per wrk *thread*: wrk gives a script no way to tie an
-- answer to the request it answers (response() gets only status, headers
-- and body), and each thread runs its connections interleaved on one event
-- loop, so "request i uses address i mod K" could not be traced back in
-- response().  What is exact is the thread: every thread has its own Lua
-- state, and its request() and response() run in that state only.  So each
-- thread is given one address before it starts, builds its one request with
-- that address (in init), and counts into its own globals.  Run wrk with
-- -t equal to (a multiple of) the number of addresses and -c a multiple of
-- -t; the addresses are the script arguments (after "--"), thread n taking
-- argument (n mod K) + 1.  done() runs in the main Lua state after all
-- threads have stopped, reads each thread's counters through thread:get and
-- prints one line per address (summed over threads of that address):
--
--   LOAD_COUNT <address> <200s> <429s> <other statuses>
--   LOAD_RUN {"duration_us":..,"requests":..,...}
--
-- (wrk never pipelines here: without a request() that returns several
-- requests, each connection has one request in flight at a time.)

local threads = {}   -- main state: the thread objects, in creation order

function setup(thread)
  -- Main state, once per thread, before init() runs in the thread's state.
  thread:set("index", #threads)
  table.insert(threads, thread)
end

function init(args)
  -- Thread state.  `index` was set by setup() above.
  if #args == 0 then
    error("limits.lua: pass the client addresses after --")
  end
  addr = args[(index % #args) + 1]
  wrk.headers["X-Forwarded-For"] = addr
  ok, limited, other = 0, 0, 0
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  elseif status == 429 then
    limited = limited + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local order, sums = {}, {}
  for _, thread in ipairs(threads) do
    local a = thread:get("addr")
    if not sums[a] then
      sums[a] = {0, 0, 0}
      table.insert(order, a)
    end
    local s = sums[a]
    s[1] = s[1] + thread:get("ok")
    s[2] = s[2] + thread:get("limited")
    s[3] = s[3] + thread:get("other")
  end
  for _, a in ipairs(order) do
    local s = sums[a]
    io.write(string.format("LOAD_COUNT %s %d %d %d\n", a, s[1], s[2], s[3]))
  end
  local e = summary.errors
  io.write(string.format(
    'LOAD_RUN {"duration_us":%.0f,"requests":%.0f,"err_connect":%.0f,' ..
    '"err_read":%.0f,"err_write":%.0f,"err_timeout":%.0f}\n',
    summary.duration, summary.requests, e.connect, e.read, e.write, e.timeout))
end
