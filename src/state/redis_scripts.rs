//! The Lua scripts the Redis store runs, each one atomic on the server: lock release and
//! renewal by value, counters with expiry, and the GCRA step on Redis's own clock.

/// Compare-and-delete: only the holder of a lock may release it.
pub(crate) const DELETE_IF: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Compare-and-renew: only the holder of a lock may extend it.
pub(crate) const RENEW_IF: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// INCRBY and PEXPIRE together, so a counter never outlives its expiry.
pub(crate) const ADD: &str = r"
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return value";

/// `memory::gcra`, step for step, on Redis's clock so that replicas agree on "now".
/// ARGV: period (µs, already clamped), count, cost. Returns {allowed, retry_after µs}.
/// Timestamps (~2^51 µs) are exact in Lua's doubles; '%.0f' keeps them out of
/// exponent notation.
pub(crate) const GCRA: &str = r"
local period = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
if count == 0 or cost > count then
  return {0, period}
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = math.max(math.floor(period / count), 1)
local tolerance = count * interval
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  tat = tonumber(stored) or now
end
local new_tat = math.max(tat, now) + math.max(cost, 1) * interval
local ahead = new_tat - now
if ahead > tolerance then
  return {0, ahead - tolerance}
end
if cost > 0 then
  local ttl = math.ceil(ahead / 1000)
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', string.format('%.0f', ttl))
end
return {1, 0}";
