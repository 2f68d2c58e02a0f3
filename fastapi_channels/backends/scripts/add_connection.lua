-- Take a connection slot under the per-user and the total limit, atomically.
-- KEYS[1] servers zset, KEYS[2] the user's hash server -> count (ignored when the user id is
-- ""), KEYS[3] this server's connection hash (channel -> user id), KEYS[4] epoch hash
-- ARGV[1] server id, ARGV[2] channel name, ARGV[3] user id as a key part (RedisKeys.key_part:
-- escaped, so `users:<it>` is the user's key; "" if none)
-- ARGV[4] max per user, ARGV[5] max total, ARGV[6] key prefix
-- ARGV[7] epoch known to the caller, ARGV[8] a fresh epoch id, ARGV[9] resync window ms
-- ARGV[10] 'new' (a connection asking to be admitted) or 'reassert' (one this server already
-- holds, written back after Redis lost it)
-- Returns {code, epoch id}: 0 accepted, 1 user limit, 2 total limit, 3 state being rebuilt.
-- O(servers): slots are counted per server, never per connection.
local prefix, server, channel, user = ARGV[6], ARGV[1], ARGV[2], ARGV[3]
local id, trusted = epoch(KEYS[4], ARGV[7], ARGV[8], tonumber(ARGV[9]), nil)
local reassert = ARGV[10] == 'reassert'
if not trusted and not reassert then
  -- Other servers may not have written their connections back yet: limits cannot be checked.
  return {3, id}
end

local previous = redis.call('HGET', KEYS[3], channel)
if previous then
  if reassert then
    return {0, id}
  end
  -- Left by an earlier process with this server id: its slot is not this connection's.
  redis.call('HDEL', KEYS[3], channel)
  if previous ~= '' then
    decrement(prefix .. 'users:' .. previous, server)
  end
end

local total, now = 0, now_ms()
for _, other in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if other == server or is_alive(prefix, other, now) then
    total = total + redis.call('HLEN', prefix .. 'srv:' .. other .. ':conns')
  end
end
if total >= tonumber(ARGV[5]) then
  return {2, id}
end

if user ~= '' then
  local held = 0
  local fields = redis.call('HGETALL', KEYS[2])
  for i = 1, #fields, 2 do
    if fields[i] == server or is_alive(prefix, fields[i], now) then
      held = held + tonumber(fields[i + 1])
    end
  end
  if held >= tonumber(ARGV[4]) then
    return {1, id}
  end
  redis.call('HINCRBY', KEYS[2], server, 1)
end

redis.call('HSET', KEYS[3], channel, user)
return {0, id}
