-- Refresh this server's liveness. Returns {existed, epoch id, trusted}: existed is 0 when the liveness
-- key was gone (Redis lost its data, or this server was silent past the expiry and may have
-- been reaped): the caller then writes its whole state again; trusted is 0 while the state
-- may still be being written back after Redis lost it.
-- KEYS[1] liveness key, KEYS[2] servers zset, KEYS[3] epoch hash
-- ARGV[1] expiry seconds, ARGV[2] server id, ARGV[3] epoch known to the caller,
-- ARGV[4] a fresh epoch id, ARGV[5] resync window ms, ARGV[6] '1' to check that this Redis
-- process wrote the state (Sentinel: see check_writer)
local now = now_ms()
local id, trusted = epoch(KEYS[3], ARGV[3], ARGV[4], tonumber(ARGV[5]), now)
if ARGV[6] == '1' then
  id, trusted = check_writer(KEYS[3], id, trusted, ARGV[4], tonumber(ARGV[5]), now)
end
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]) * 1000, ARGV[2])
return {existed, id, trusted and 1 or 0}
