-- Create (or replace) records, each a hash living the same ttl.
-- KEYS: the records; ARGV[1] ttl (ms), then per record: its field count n, then n field/value pairs
local at = 2
for i = 1, #KEYS do
  local n = tonumber(ARGV[at])
  redis.call('DEL', KEYS[i])
  redis.call('HSET', KEYS[i], unpack(ARGV, at + 1, at + 2 * n))
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
  at = at + 2 * n + 1
end
return #KEYS
