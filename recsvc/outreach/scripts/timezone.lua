-- Store a member's time zone (profile imports). KEYS: 1 profile (hash), 2 the erasure suppression
-- mark. ARGV: 1 IANA zone ('' = the policy's default: the stored zone is removed, so decisions
-- follow default_timezone even after it changes), 2 ttl ms. Returns 1 when written, -1 (nothing
-- written) when erased.
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if ARGV[1] == '' then
  redis.call('HDEL', KEYS[1], 'tz')
else
  redis.call('HSET', KEYS[1], 'tz', ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
