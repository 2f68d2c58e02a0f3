-- Give back a connection slot (idempotent: a second call finds nothing to give back).
-- KEYS[1] the user's hash server -> count (ignored when the user id is ""), KEYS[2] this
-- server's connection hash; ARGV[1] channel name, ARGV[2] user id ("" if none), ARGV[3] server id
if redis.call('HDEL', KEYS[2], ARGV[1]) == 1 and ARGV[2] ~= '' then
  decrement(KEYS[1], ARGV[3])
end
return 1
