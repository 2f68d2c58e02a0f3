-- Shared by the scripts that need them; prepended to a script when it is loaded.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Take one from a server's count in a hash; the field goes when nothing is left.
local function decrement(key, server)
  if redis.call('HINCRBY', key, server, -1) <= 0 then
    redis.call('HDEL', key, server)
  end
end

-- A server is alive while its deadline in the servers zset is ahead of `now` (ms): its
-- heartbeat sets it with its liveness key's TTL, its stop sets 0, the reaper removes it. Read
-- from the zset rather than the liveness keys so that a script that declares the zset reads
-- liveness only from a key it declared: on a cluster, while a resharding moves our slot, a
-- script runs on the importing master only when its declared keys have arrived there, and a
-- key it did not declare may not have (publish.lua declares the zset for that).
local function is_alive(prefix, server, now)
  local deadline = redis.call('ZSCORE', prefix .. 'servers', server)
  return deadline ~= false and tonumber(deadline) > now
end

-- The incarnation of the cluster state. A missing epoch key means Redis lost its data (or
-- this is the first server ever): the first caller makes a new one. When a caller that knew
-- an older epoch meets a new one, the state was lost, and until `window` ms after its birth
-- the servers may still be writing theirs back: nothing read from it can be trusted yet.
-- Returns the epoch id and whether the state is trustworthy now. `now` (ms) may be nil: the
-- clock is read only when it matters, so the common path costs one HMGET.
local function epoch(key, known, fresh, window, now)
  local id, born, lost = unpack(redis.call('HMGET', key, 'id', 'born', 'lost'))
  if not id then
    now = now or now_ms()
    id, born = fresh, now
    redis.call('HSET', key, 'id', id, 'born', born)
    -- Lost, unless nothing can have been: the caller knew no epoch and Redis has been up
    -- longer than the window (a restart that emptied it would be younger). A FLUSHALL on a
    -- long-running Redis is noticed by the first server that knew the old epoch.
    local uptime = tonumber(string.match(redis.call('INFO', 'server'), 'uptime_in_seconds:(%d+)'))
    if known ~= '' or uptime * 1000 < window then
      lost = '1'
      redis.call('HSET', key, 'lost', lost)
    end
  elseif known ~= '' and known ~= id and lost ~= '1' then
    lost = '1'
    redis.call('HSET', key, 'lost', lost)
  end
  if lost == '1' and (now or now_ms()) < tonumber(born) + window then
    return id, false
  end
  return id, true
end

-- Behind Sentinel: is the Redis process serving the state the one that wrote it? A replica
-- promoted to master holds what it had replicated, which may lack the old master's last writes
-- (a slot, a membership, a removal), and the epoch hash it copied names the old master's run
-- id. The state then counts as lost: a new epoch, untrusted for `window` ms, so every server
-- writes its own back (and removes its leftovers) as after a restart that emptied Redis. A hash
-- that names no run id (made since the last check, or by an older version) is adopted.
-- Returns the epoch id and whether it is trusted, as `epoch` does. Reads INFO: the heartbeat's
-- to call (each server's every keeper tick, and at once after its pub/sub reconnects).
local function check_writer(key, id, trusted, fresh, window, now)
  local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  local recorded = redis.call('HGET', key, 'run')
  if recorded == run then
    return id, trusted
  end
  if not recorded then
    redis.call('HSET', key, 'run', run)
    return id, trusted
  end
  redis.call('HSET', key, 'id', fresh, 'born', now, 'lost', '1', 'run', run)
  return fresh, window <= 0  -- untrusted for the window, as `epoch` says of a lost state
end

-- Live servers with a positive count in a hash server -> count, and the sum of their counts.
-- Dead servers' fields are left for the reaper. O(servers), never O(members).
local function live_counts(prefix, key)
  local fields = redis.call('HGETALL', key)
  local servers, total, now = 0, 0, now_ms()
  for i = 1, #fields, 2 do
    local count = tonumber(fields[i + 1])
    if count > 0 and is_alive(prefix, fields[i], now) then
      servers = servers + 1
      total = total + count
    end
  end
  return servers, total
end

-- After a PUBLISH that reached `reached` servers: how many were owed it, and how many
-- connections they hold. `kind` says how to read `key`: 'counts' (a hash server -> count:
-- a group's members or a user's connections), 'servers' (the servers zset: every live
-- server) or 'owner' (an inbox: its owner's liveness key). O(servers).
local function audience(kind, key, reached, exact, prefix)
  local expected, total = 0, 0
  if kind == 'counts' then
    if exact then
      expected, total = live_counts(prefix, key)
    else
      expected = redis.call('HLEN', key)
      if reached < expected then
        -- Servers that died but are not reaped yet are not owed anything.
        expected, total = live_counts(prefix, key)
      end
    end
  elseif kind == 'servers' then
    -- Every live server listens to broadcast from its start, with connections or not: all
    -- are owed it, so an idle one can never stand in for one that missed it.
    local now = now_ms()
    for _, server in ipairs(redis.call('ZRANGE', key, 0, -1)) do
      if is_alive(prefix, server, now) then
        expected = expected + 1
        total = total + redis.call('HLEN', prefix .. 'srv:' .. server .. ':conns')
      end
    end
  else
    expected = redis.call('EXISTS', key)
  end
  return expected, total
end

