-- Claim the presence work that is due (docs/presence.md): rooms where a node's
-- lease ran out, and pending vacates whose offline_grace is over. Each entry
-- claimed is pushed ARGV[2] ms later, so no other node takes it meanwhile and
-- it comes back if its claimer dies before it is done (then ZREMs it).
-- KEYS[1] the due index: ZSET entry -> when (unix ms)
-- ARGV[1] how many at most, ARGV[2] retry after (ms), ARGV[3] the index's TTL (ms)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, entry in ipairs(due) do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), entry) end
if #due > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return due
