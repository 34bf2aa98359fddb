-- Count and clear a user's live sockets; optionally raise their revocation cut-off.
-- KEYS[1] live-socket registry, KEYS[2] revoked cut-off
-- ARGV[1] now, ARGV[2] '1' to revoke, ARGV[3] cut-off ttl (ms)
local n = redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf')
redis.call('DEL', KEYS[1])
if ARGV[2] == '1' then
  local current = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tonumber(ARGV[1]) > current then
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  else
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
  end
end
return n
