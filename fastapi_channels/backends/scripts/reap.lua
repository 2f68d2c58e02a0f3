-- Reclaim the state of servers whose liveness key expired, a bounded batch per call.
-- KEYS[1] servers zset, KEYS[2] group index zset
-- ARGV[1] key prefix, ARGV[2] batch size
-- Returns the number of entries reclaimed; the caller repeats while it is positive.
local prefix = ARGV[1]
local batch = tonumber(ARGV[2])
local done = 0
local now = now_ms()
for _, server in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  if not is_alive(prefix, server, now) then
    local conns_key = prefix .. 'srv:' .. server .. ':conns'
    local members_key = prefix .. 'srv:' .. server .. ':members'
    local fields = redis.call('HRANDFIELD', conns_key, batch, 'WITHVALUES')
    for i = 1, #fields, 2 do
      local channel, user = fields[i], fields[i + 1]
      if user ~= '' then
        -- One slot per reaped entry: a server back in the middle of a reap keeps the rest.
        decrement(prefix .. 'users:' .. user, server)
      end
      redis.call('HDEL', conns_key, channel)
      done = done + 1
    end
    for _, entry in ipairs(redis.call('SPOP', members_key, batch)) do
      -- "<group key part>|<channel>": an escaped group holds no '|', so the first one splits
      -- (the channel name after it may hold any). Connection hash values are user key parts.
      local group, channel = string.match(entry, '^(.-)|(.*)$')
      if group then
        local group_key = prefix .. 'group:' .. group
        local counts_key = prefix .. 'gsrv:' .. group
        if redis.call('SREM', group_key, channel) == 1 then
          decrement(counts_key, server)
        end
        if redis.call('SCARD', group_key) == 0 then
          redis.call('DEL', group_key, counts_key)
          redis.call('ZREM', KEYS[2], group)
        end
      end
      done = done + 1
    end
    if redis.call('EXISTS', conns_key) == 0 and redis.call('EXISTS', members_key) == 0 then
      redis.call('ZREM', KEYS[1], server)
    end
    if done >= batch then
      return done
    end
  end
end
return done
