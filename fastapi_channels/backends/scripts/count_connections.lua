-- Connections across the cluster: the connection hashes of live servers. O(servers).
-- KEYS[1] servers zset; ARGV[1] key prefix
local total = 0
local now = now_ms()
for _, server in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if is_alive(ARGV[1], server, now) then
    total = total + redis.call('HLEN', ARGV[1] .. 'srv:' .. server .. ':conns')
  end
end
return total
