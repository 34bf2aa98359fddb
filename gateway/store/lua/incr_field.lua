-- Add 1 to an integer field of an existing record; return the record (nil if absent).
-- KEYS[1] record; ARGV[1] field
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return redis.call('HGETALL', KEYS[1])
