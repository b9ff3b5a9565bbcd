-- Record what the member did with a message. KEYS: 1 state (hash), 2 the erasure suppression mark.
-- ARGV: 1 kind (ignored|engaged|unsubscribed|complained), 2 channel, 3 block until (epoch ms),
--       4 state ttl (ms). A block only ever grows longer; an open or click resets the streak.
-- Returns 1, or -1 (nothing written) when the member is erased.
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local kind = ARGV[1]
if kind == 'ignored' then
  redis.call('HINCRBY', KEYS[1], 'streak', 1)
elseif kind == 'engaged' then
  redis.call('HSET', KEYS[1], 'streak', 0)
else
  local field = 'b:' .. ARGV[2]
  local until_ms = tonumber(ARGV[3])
  local cur = redis.call('HGET', KEYS[1], field)
  if (not cur) or tonumber(string.sub(cur, 3)) < until_ms then
    local tag = 'U'
    if kind == 'complained' then tag = 'C' end
    redis.call('HSET', KEYS[1], field, tag .. '|' .. ARGV[3])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
