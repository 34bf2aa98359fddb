-- Rotate a refresh token: rotated | missing | reuse | stale | revoked, with the old record.
-- KEYS[1] old token, KEYS[2] new token, KEYS[3] family, KEYS[4] user's revocation cut-off
-- ARGV[1] ttl (ms), ARGV[2] '1' for the gateway's own renewal, ARGV[3..] new record's field/value pairs
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local record = redis.call('HGETALL', KEYS[1])
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then
  if ARGV[2] == '1' then return {'stale', record} end
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HSET', KEYS[3], 'status', 'revoked') end
  return {'reuse', record}
end
if redis.call('HGET', KEYS[3], 'status') ~= 'active' then return {'revoked', record} end
local cutoff = redis.call('GET', KEYS[4])
if cutoff and tonumber(redis.call('HGET', KEYS[1], 'iat')) < tonumber(cutoff) then
  return {'revoked', record}
end
redis.call('HSET', KEYS[1], 'state', 'rotated')
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[1])
return {'rotated', record}
