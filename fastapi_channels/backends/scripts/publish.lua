-- Publish one envelope and report whether every server that should hear it did.
-- KEYS[1] epoch hash, KEYS[2] the topic's audience: a hash server -> count (group or user
-- topic), the servers zset (broadcast) or the owner's liveness key (inbox), KEYS[3] the
-- servers zset (read for liveness: declared, see `is_alive`), KEYS[4] (inbox sends for one
-- connection only) the owner's connection hash
-- ARGV[1] channel, ARGV[2] payload, ARGV[3] audience kind: 'counts' | 'servers' | 'owner'
-- ARGV[4] key prefix, ARGV[5] epoch known to the caller ('' if none), ARGV[6] a fresh epoch
-- id, ARGV[7] resync window ms, ARGV[8] '1' to always count the audience exactly, ARGV[9]
-- (with KEYS[4]) the connection's channel name
-- Returns {reached, expected (-1 while the state is being rebuilt), connections, epoch id}.
-- PUBLISH returns how many subscribers got the message: one pub/sub connection per server.
local prefix = ARGV[4]
local id, trusted = epoch(KEYS[1], ARGV[5], ARGV[6], tonumber(ARGV[7]), nil)
local kind = ARGV[3]
if KEYS[4] and trusted and redis.call('HEXISTS', KEYS[4], ARGV[9]) == 0 then
  -- The connection is registered nowhere (it closed): nothing to publish, nobody owed it.
  -- While the state is being rebuilt its owner may not have written it back yet: sent.
  return {0, 0, 0, id}
end
local reached = redis.call('PUBLISH', ARGV[1], ARGV[2])
local expected, total = audience(kind, KEYS[2], reached, ARGV[8] == '1', prefix)
if not trusted and not (kind == 'owner' and reached > 0) then
  expected = -1
end
return {reached, expected, total, id}
