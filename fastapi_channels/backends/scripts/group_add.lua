-- Add a member to a group; refuse a new group when the cluster already has max_groups.
-- On a cluster the groups are split over partitions, each with its own index: the caller
-- passes how many groups the other partitions hold (ARGV[7]), or -1 when it has not counted
-- them, which makes the script answer -1 for a new group instead of deciding.
-- KEYS[1] group member set, KEYS[2] group index zset (name -> expiry ms), KEYS[3] this
-- server's memberships set, KEYS[4] the group's hash server -> member count
-- ARGV[1] group as a key part (escaped: what the index holds), ARGV[2] channel, ARGV[3] max
-- groups, ARGV[4] group expiry seconds, ARGV[5] membership entry "<group key part>|<channel>",
-- ARGV[6] server id, ARGV[7] groups in the other partitions (-1: not counted yet)
local now = now_ms()
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZSCORE', KEYS[2], ARGV[1]) == false then
    local others = tonumber(ARGV[7])
    if others < 0 then
      return -1
    end
    if redis.call('ZCARD', KEYS[2]) + others >= tonumber(ARGV[3]) then
      return 0
    end
  end
end
if redis.call('SADD', KEYS[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[4], ARGV[6], 1)
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[4])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]) * 1000, ARGV[1])
redis.call('SADD', KEYS[3], ARGV[5])
return 1
