-- Presence of one room (docs/presence.md): who is in it, with how many
-- connections, counted over the cluster. One script for every operation on a
-- room, because each of them first drops what dead nodes left behind and then
-- reports the same transitions, decided here, atomically, once for the cluster.
--
-- KEYS[1] members: ZSET, every score 0, a member per sub (lexicographic pages)
-- KEYS[2] counts:  HASH sub -> connections over the cluster
-- KEYS[3] owned:   ZSET "<node>\0<sub>" -> connections on that node
-- KEYS[4] leases:  ZSET node -> lease deadline (unix ms); a node renews its own
-- KEYS[5] meta:    HASH conns -> connections of the room; vacating -> deadline
--                  (ms) of a pending room.vacated / user.offline (offline_grace)
-- ARGV[1] op: enter | leave | beat | sync | read | settle
-- ARGV[2] node, ARGV[3] lease (ms), ARGV[4] keys' TTL (ms), ARGV[5] grace (ms)
-- enter: ARGV[6] sub, ARGV[7] limit (0: none) of the sub's connections
-- leave: ARGV[6] sub
-- sync:  ARGV[6..] sub, connections, ...: this node's exact contribution
-- read:  ARGV[6] cursor (after this sub; '' from the start), ARGV[7] page size
-- settle: ARGV[6] the vacating deadline to confirm ('' none)
--
-- Returns {flags, entered, left, page}: flags = {refused, occupied, vacating
-- deadline ('' none), vacated, new lease, lost, conns, users (read), now (ms)}; entered / left:
-- subs whose first connection came / last one went (net, in this call); page:
-- read's sub, connections, ... (up to size + 1 of them: one more says "more").
local members, counts, owned, leases, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op, node = ARGV[1], ARGV[2]
local lease, keep, grace = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
-- Redis's clock, not the nodes': leases compare across nodes whose clocks may differ.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local conns0 = tonumber(redis.call('HGET', meta, 'conns') or '0')
local marker0 = redis.call('HGET', meta, 'vacating')
local entered, left = {}, {}

local function lower(nd) return '[' .. nd .. '\0' end
local function upper(nd) return '(' .. nd .. '\1' end

-- Set node nd's connections of sub to n, keeping the totals and the net transitions.
local function set(nd, sub, n)
  local entry = nd .. '\0' .. sub
  local had = tonumber(redis.call('ZSCORE', owned, entry) or '0')
  if n < 0 then n = 0 end
  if n == had then return end
  if n == 0 then redis.call('ZREM', owned, entry) else redis.call('ZADD', owned, n, entry) end
  local delta = n - had
  local total = redis.call('HINCRBY', counts, sub, delta)
  if total <= 0 then
    redis.call('HDEL', counts, sub)
    redis.call('ZREM', members, sub)
    if entered[sub] then entered[sub] = nil else left[sub] = true end
  elseif total == delta then
    redis.call('ZADD', members, 0, sub)
    if left[sub] then left[sub] = nil else entered[sub] = true end
  end
  local conns = redis.call('HINCRBY', meta, 'conns', delta)
  if conns <= 0 then redis.call('HDEL', meta, 'conns') end
end

-- This node's entries: sub -> connections.
local function contribution(nd)
  local entries = redis.call('ZRANGEBYLEX', owned, lower(nd), upper(nd))
  local mine = {}
  -- In slices: unpack() of a long list overflows Lua's stack.
  for first = 1, #entries, 1000 do
    local slice = {unpack(entries, first, math.min(first + 999, #entries))}
    local scores = redis.call('ZMSCORE', owned, unpack(slice))
    for i, entry in ipairs(slice) do mine[string.sub(entry, #nd + 2)] = tonumber(scores[i]) end
  end
  return mine
end

-- Drop the connections of every node whose lease ran out (killed, or cut off).
local function reap()
  for _, nd in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', '(' .. now)) do
    for sub, _ in pairs(contribution(nd)) do set(nd, sub, 0) end
    redis.call('ZREM', leases, nd)
  end
end

local function holds(nd)
  return #redis.call('ZRANGEBYLEX', owned, lower(nd), upper(nd), 'LIMIT', 0, 1) > 0
end

local refused, new_lease, lost, vacated = 0, 0, 0, 0
local page = {}
reap()
if op == 'enter' then
  local sub, limit = ARGV[6], tonumber(ARGV[7])
  if limit > 0 and tonumber(redis.call('HGET', counts, sub) or '0') >= limit then
    refused = 1
  else
    set(node, sub, tonumber(redis.call('ZSCORE', owned, node .. '\0' .. sub) or '0') + 1)
    new_lease = redis.call('ZADD', leases, now + lease, node)
  end
elseif op == 'leave' then
  local sub = ARGV[6]
  set(node, sub, tonumber(redis.call('ZSCORE', owned, node .. '\0' .. sub) or '0') - 1)
  if not holds(node) then redis.call('ZREM', leases, node) end
elseif op == 'beat' then
  if redis.call('ZSCORE', leases, node) then
    redis.call('ZADD', leases, now + lease, node)
  else
    lost = 1  -- reaped (this node stalled past its lease) or lost by Redis: the caller syncs
  end
elseif op == 'sync' then
  local want = {}
  for i = 6, #ARGV, 2 do want[ARGV[i]] = tonumber(ARGV[i + 1]) end
  for sub, _ in pairs(contribution(node)) do
    if not want[sub] then set(node, sub, 0) end
  end
  for sub, n in pairs(want) do set(node, sub, n) end
  if holds(node) then
    new_lease = redis.call('ZADD', leases, now + lease, node)
  else
    redis.call('ZREM', leases, node)
  end
elseif op == 'read' then
  local cursor, size = ARGV[6], tonumber(ARGV[7])
  local subs = redis.call('ZRANGEBYLEX', members, cursor == '' and '-' or '(' .. cursor, '+', 'LIMIT', 0, size + 1)
  if #subs > 0 then
    local n = redis.call('HMGET', counts, unpack(subs))
    for i, sub in ipairs(subs) do
      page[#page + 1] = sub
      page[#page + 1] = n[i] or '0'
    end
  end
end

local conns1 = tonumber(redis.call('HGET', meta, 'conns') or '0')
local occupied, vacating = 0, ''
if conns0 == 0 and conns1 > 0 then
  -- A room vacated less than offline_grace ago is occupied again: neither event.
  if marker0 then redis.call('HDEL', meta, 'vacating') else occupied = 1 end
elseif conns0 > 0 and conns1 == 0 then
  if grace > 0 then
    vacating = tostring(now + grace)
    redis.call('HSET', meta, 'vacating', vacating)
  else
    vacated = 1
  end
elseif op == 'settle' and conns1 == 0 and marker0 and marker0 == ARGV[6] and tonumber(marker0) <= now then
  redis.call('HDEL', meta, 'vacating')
  vacated = 1
end

if conns1 == 0 and not redis.call('HGET', meta, 'vacating') then
  redis.call('DEL', members, counts, owned, leases, meta)
else
  for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], keep) end
end

local users = 0
if op == 'read' then users = redis.call('ZCARD', members) end
local joined, gone = {}, {}
for sub, _ in pairs(entered) do joined[#joined + 1] = sub end
for sub, _ in pairs(left) do gone[#gone + 1] = sub end
return {{refused, occupied, vacating, vacated, new_lease, lost, conns1, users, now}, joined, gone, page}
