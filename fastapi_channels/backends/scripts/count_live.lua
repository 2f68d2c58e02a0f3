-- Count or list the members of a set whose owning server is alive.
-- KEYS[1] a set of channel names; ARGV[1] key prefix; ARGV[2] "count" or "list"
local cache = {}
local live = {}
for _, channel in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local server = string.match(channel, '^(.-)!')
  if server then
    local ok = cache[server]
    if ok == nil then
      ok = redis.call('EXISTS', ARGV[1] .. 'alive:' .. server) == 1
      cache[server] = ok
    end
    if ok then
      live[#live + 1] = channel
    end
  end
end
if ARGV[2] == 'count' then
  return #live
end
return live
