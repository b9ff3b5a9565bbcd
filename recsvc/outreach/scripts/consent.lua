-- Record consent for one channel unless a newer record exists (imports may be older than an
-- UpdateConsent call). KEYS: 1 profile (hash), 2 the erasure suppression mark.
-- ARGV: 1 channel, 2 "1"|"0", 3 epoch ms, 4 ttl ms.
-- Returns 1 when written, 0 when a newer record was kept, -1 when the member is erased.
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local field = 'c:' .. ARGV[1]
local cur = redis.call('HGET', KEYS[1], field)
if cur and tonumber(string.sub(cur, 3)) > tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], field, ARGV[2] .. '|' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
