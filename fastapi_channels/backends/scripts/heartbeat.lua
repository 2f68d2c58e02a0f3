-- Refresh this server's liveness. Returns 1 if the liveness key existed, 0 if it was gone
-- (Redis lost its data, or this server was silent past the expiry and may have been reaped):
-- the caller then writes its whole state again.
-- KEYS[1] liveness key, KEYS[2] servers zset; ARGV[1] expiry seconds, ARGV[2] server id
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]) * 1000, ARGV[2])
return existed
