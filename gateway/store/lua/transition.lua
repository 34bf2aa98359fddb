-- Compare-and-set a record's status: 1 for the one caller that changed it.
-- KEYS[1] record; ARGV[1] from status, ARGV[2] to status, ARGV[3] (optional) its new TTL (ms)
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
if ARGV[3] then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
