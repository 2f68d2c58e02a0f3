-- Remove a member from a group (idempotent); an empty group leaves the index.
-- KEYS[1] group member set, KEYS[2] group index zset, KEYS[3] this server's memberships set,
-- KEYS[4] the group's hash server -> member count
-- ARGV[1] group as a key part (escaped), ARGV[2] channel, ARGV[3] membership entry,
-- ARGV[4] server id
if redis.call('SREM', KEYS[1], ARGV[2]) == 1 then
  decrement(KEYS[4], ARGV[4])
end
redis.call('SREM', KEYS[3], ARGV[3])
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[4])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
