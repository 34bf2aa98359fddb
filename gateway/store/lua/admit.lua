-- Admit a socket of a user: refused if the credential predates the user's
-- revocation cut-off; else take the user's parked events and register the socket.
-- KEYS[1] revoked cut-off, KEYS[2] parked events, KEYS[3] live-socket registry
-- ARGV[1] credential iat, ARGV[2] socket id, ARGV[3] registry entry good until,
-- ARGV[4] registry ttl (ms), ARGV[5] now (stale entries go)
local cutoff = redis.call('GET', KEYS[1])
if cutoff and tonumber(ARGV[1]) < tonumber(cutoff) then return {1, {}} end
local parked = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return {0, parked}
