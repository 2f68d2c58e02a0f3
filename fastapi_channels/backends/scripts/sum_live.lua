-- A group's size or a user's connection count: the counts of live servers. O(servers).
-- KEYS[1] a hash server -> count; ARGV[1] key prefix
local _, total = live_counts(ARGV[1], KEYS[1])
return total
