-- Groups with members whose state has not expired. KEYS[1] group index zset.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms())
return redis.call('ZCARD', KEYS[1])
