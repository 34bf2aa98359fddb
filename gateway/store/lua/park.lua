-- Append held events for the user's next socket, keep the newest ARGV[1]; return how many went.
-- KEYS[1] parked events; ARGV[1] cap, ARGV[2] ttl (ms), ARGV[3..] events
for i = 3, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
local length = redis.call('LLEN', KEYS[1])
local dropped = 0
if length > tonumber(ARGV[1]) then
  dropped = length - tonumber(ARGV[1])
  redis.call('LTRIM', KEYS[1], dropped, -1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return dropped
