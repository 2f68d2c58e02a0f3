-- Give back a connection slot (idempotent).
-- KEYS[1] the user's slot set (ignored when the user id is ""), KEYS[2] this server's connection hash
-- ARGV[1] channel name, ARGV[2] user id ("" if none)
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('SREM', KEYS[1], ARGV[1])
end
return 1
