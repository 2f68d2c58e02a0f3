-- Store one message of a history group, number it, and publish it: one call per send.
-- KEYS[1] epoch hash, KEYS[2] the topic's audience (as in publish.lua), KEYS[3] the group's
-- stream, KEYS[4] the group's history hash (epoch, offset), KEYS[5] the servers zset (as in
-- publish.lua)
-- ARGV[1] channel, ARGV[2] what goes before the positions in the envelope (an origin tag, or
-- ''), ARGV[3] what goes between them and the frame (an exclusion header, or ''), ARGV[4] the
-- message: a JSON object's text, ARGV[5] audience kind, ARGV[6] key prefix, ARGV[7] cluster
-- epoch known to the caller, ARGV[8] a fresh cluster epoch id, ARGV[9] resync window ms,
-- ARGV[10] history size, ARGV[11] history TTL seconds, ARGV[12] a fresh history epoch
-- Returns {reached, expected (-1 while the state is being rebuilt), connections, cluster
-- epoch, offset, history epoch}.
-- The stream's entry ids are `<offset>-1`, so a read after a position is one XRANGE; the
-- group's history epoch changes whenever its history was lost (expired, or Redis lost it).
-- The history hash also names the cluster epoch it was written under ('cluster'): once that
-- epoch is replaced while the history survived (Sentinel promoted a replica, which may lack
-- the old master's last entries), offsets could be handed out twice, so the history starts
-- again under a new epoch. A hash without the field (written by an older version) adopts it.
local prefix = ARGV[6]
local id, trusted = epoch(KEYS[1], ARGV[7], ARGV[8], tonumber(ARGV[9]), nil)
local gepoch, offset, cluster = unpack(redis.call('HMGET', KEYS[4], 'epoch', 'offset', 'cluster'))
if gepoch and cluster and cluster ~= id then
  gepoch = false
end
if not gepoch then
  gepoch, offset = ARGV[12], 0
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[4], 'epoch', gepoch, 'cluster', id)
elseif not cluster then
  redis.call('HSET', KEYS[4], 'cluster', id)
end
offset = tonumber(offset) + 1
redis.call('HSET', KEYS[4], 'offset', offset)
local body = ARGV[4]
local rest = string.gsub(string.sub(body, 2), '^%s*', '')
local frame = '{"offset":' .. offset .. ',"epoch":"' .. gepoch .. '"'
if string.sub(rest, 1, 1) == '}' then
  frame = frame .. '}'
else
  frame = frame .. ',' .. rest
end
if ARGV[3] == '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[10], offset .. '-1', 'f', frame)
else
  -- The exclusion header is kept, so a server filling a gap leaves out the same members.
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[10], offset .. '-1', 'f', frame, 'x', ARGV[3])
end
redis.call('EXPIRE', KEYS[3], ARGV[11])
redis.call('EXPIRE', KEYS[4], ARGV[11])
local payload = ARGV[2] .. 'h' .. offset .. ':' .. gepoch .. '\n' .. ARGV[3] .. 't' .. frame
local reached = redis.call('PUBLISH', ARGV[1], payload)
local kind = ARGV[5]
local expected, total = audience(kind, KEYS[2], reached, false, prefix)
if not trusted and not (kind == 'owner' and reached > 0) then
  expected = -1
end
return {reached, expected, total, id, offset, gepoch}
