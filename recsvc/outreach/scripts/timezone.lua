-- Store a member's time zone (profile imports). KEYS: 1 profile (hash), 2 the erasure suppression
-- mark. ARGV: 1 IANA zone, 2 ttl ms. Returns 1 when written, -1 (nothing written) when erased.
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
redis.call('HSET', KEYS[1], 'tz', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
