-- A history group's position and the retained messages after a position, in one read.
-- KEYS[1] the group's stream, KEYS[2] the group's history hash, KEYS[3] the cluster epoch hash
-- ARGV[1] read after this offset, ARGV[2] at most this many, ARGV[3] history size
-- Returns {epoch or false, offset, first recoverable offset, offset1, frame1, exclusion1,
-- offset2, ...} (an exclusion header, or '').
-- The window is exactly the last `size` offsets, whatever an approximate trim left
-- physically, so every backend answers the same (an idle group's whole history expires after
-- the TTL, with its keys).
local gepoch, last, cluster = unpack(redis.call('HMGET', KEYS[2], 'epoch', 'offset', 'cluster'))
if not gepoch or (cluster and cluster ~= redis.call('HGET', KEYS[3], 'id')) then
  -- None, or written under a cluster epoch that was replaced since (see publish_history.lua):
  -- nothing in it is a position to recover from; the next send starts a new history epoch.
  return {false, 0, 1}
end
last = tonumber(last)
local size = tonumber(ARGV[3])
local first = math.max(1, last - size + 1)
local after = math.max(tonumber(ARGV[1]), first - 1)
local out = {gepoch, last, first}
local limit = tonumber(ARGV[2])
if limit < 1 then
  return out
end
local entries = redis.call('XRANGE', KEYS[1], (after + 1) .. '-1', '+', 'COUNT', limit)
for _, entry in ipairs(entries) do
  local offset = tonumber(string.match(entry[1], '^(%d+)'))
  local fields = entry[2]
  local frame, exclude = nil, ''
  for i = 1, #fields, 2 do
    local name = fields[i]
    if name == 'f' then
      frame = fields[i + 1]
    elseif name == 'x' then
      exclude = fields[i + 1]
    end
  end
  if frame then
    out[#out + 1] = offset
    out[#out + 1] = frame
    out[#out + 1] = exclude
  end
end
-- Entries physically gone (trimmed) below the first one found are not recoverable.
if #entries > 0 then
  local found = tonumber(string.match(entries[1][1], '^(%d+)'))
  if found > after + 1 then
    out[3] = math.max(out[3], found)
  end
elseif after < last then
  out[3] = last + 1
end
return out
