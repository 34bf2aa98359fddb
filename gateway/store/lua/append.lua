-- Append a member to a list unless it is there already, and renew the list's TTL.
-- KEYS[1] list; ARGV[1] member, ARGV[2] ttl (ms)
if redis.call('LPOS', KEYS[1], ARGV[1]) == false then redis.call('RPUSH', KEYS[1], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
