-- Append an entry to a stream trimmed to about ARGV[1] entries, and renew its TTL.
-- KEYS[1] stream; ARGV[1] maxlen, ARGV[2] ttl (ms), ARGV[3..] field/value pairs
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return id
