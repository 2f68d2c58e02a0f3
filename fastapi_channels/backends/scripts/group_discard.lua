-- Remove a member from a group; an empty group leaves the index.
-- KEYS[1] group member set, KEYS[2] group index zset, KEYS[3] this server's memberships set
-- ARGV[1] group, ARGV[2] channel, ARGV[3] membership entry
redis.call('SREM', KEYS[1], ARGV[2])
redis.call('SREM', KEYS[3], ARGV[3])
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
