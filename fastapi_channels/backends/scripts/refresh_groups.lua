-- Keep the groups this server has members in from expiring while they are in use.
-- KEYS[1] group index zset; ARGV[1] key prefix, ARGV[2] group expiry seconds, ARGV[3..] group
-- names as key parts (escaped, as the index and the keys hold them)
-- Returns the groups that had expired already (a refresh came too late): the caller writes
-- its memberships in them back.
local now = now_ms()
local expiry = tonumber(ARGV[2])
local gone = {}
for i = 3, #ARGV do
  if redis.call('EXPIRE', ARGV[1] .. 'group:' .. ARGV[i], expiry) == 1 then
    redis.call('EXPIRE', ARGV[1] .. 'gsrv:' .. ARGV[i], expiry)
    redis.call('ZADD', KEYS[1], now + expiry * 1000, ARGV[i])
  else
    gone[#gone + 1] = ARGV[i]
  end
end
return gone
