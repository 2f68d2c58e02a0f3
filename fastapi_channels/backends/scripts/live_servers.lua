-- The live servers (`is_alive`). KEYS[1] servers zset; ARGV[1] key prefix
local live = {}
local now = now_ms()
for _, server in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if is_alive(ARGV[1], server, now) then
    live[#live + 1] = server
  end
end
return live
