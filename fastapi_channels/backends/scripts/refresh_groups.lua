-- Keep the groups this server has members in from expiring while they are in use.
-- KEYS[1] group index zset; ARGV[1] key prefix, ARGV[2] group expiry seconds, ARGV[3] this
-- server's id, ARGV[4..] group names as key parts (escaped, as the index and the keys hold them)
-- Returns the groups where this server's members are not counted any more: the group expired
-- (a refresh came too late), maybe written back since by another server with only its own
-- members. The caller writes its memberships in them back.
local now = now_ms()
local expiry = tonumber(ARGV[2])
local server = ARGV[3]
local gone = {}
for i = 4, #ARGV do
  local servers = ARGV[1] .. 'gsrv:' .. ARGV[i]
  if redis.call('EXPIRE', ARGV[1] .. 'group:' .. ARGV[i], expiry) == 1 then
    redis.call('EXPIRE', servers, expiry)
    redis.call('ZADD', KEYS[1], now + expiry * 1000, ARGV[i])
  end
  if redis.call('HEXISTS', servers, server) == 0 then
    gone[#gone + 1] = ARGV[i]
  end
end
return gone
