-- Publish on a user's topic and return how many live connections the user has.
-- KEYS[1] the user's slot set; ARGV[1] pub/sub channel, ARGV[2] payload, ARGV[3] key prefix
redis.call('PUBLISH', ARGV[1], ARGV[2])
local cache = {}
local count = 0
for _, channel in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local server = string.match(channel, '^(.-)!')
  if server then
    local ok = cache[server]
    if ok == nil then
      ok = redis.call('EXISTS', ARGV[3] .. 'alive:' .. server) == 1
      cache[server] = ok
    end
    if ok then
      count = count + 1
    end
  end
end
return count
