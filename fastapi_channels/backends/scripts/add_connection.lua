-- Take a connection slot under the per-user and the total limit, atomically.
-- KEYS[1] servers zset, KEYS[2] the user's slot set (ignored when the user id is ""),
-- KEYS[3] this server's connection hash (channel -> user id)
-- ARGV[1] server id, ARGV[2] channel name, ARGV[3] user id ("" if none)
-- ARGV[4] max per user, ARGV[5] max total, ARGV[6] key prefix
-- Returns 0 accepted, 1 user limit, 2 total limit.
-- Slots of servers whose liveness key expired do not count (the reaper removes them later).
local prefix = ARGV[6]
local function alive(server)
  return server == ARGV[1] or redis.call('EXISTS', prefix .. 'alive:' .. server) == 1
end

if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then
  return 0
end

local total = 0
for _, server in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if alive(server) then
    total = total + redis.call('HLEN', prefix .. 'srv:' .. server .. ':conns')
  end
end
if total >= tonumber(ARGV[5]) then
  return 2
end

if ARGV[3] ~= '' then
  local held = 0
  for _, channel in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local server = string.match(channel, '^(.-)!')
    if server and alive(server) then
      held = held + 1
    else
      redis.call('SREM', KEYS[2], channel)
    end
  end
  if held >= tonumber(ARGV[4]) then
    return 1
  end
  redis.call('SADD', KEYS[2], ARGV[2])
end

redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
return 0
