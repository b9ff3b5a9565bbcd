-- Give a reserved slot back: remove the send, its campaign mark and its pushed item.
-- KEYS: 1 sends, 2 tx, 3 campaigns, 4 recently pushed. ARGV: 1 reservation token.
-- Returns 1 when a reservation was found and removed, else 0.
local prefix = ARGV[1] .. '|'
for k = 1, 2 do
  local entries = redis.call('ZRANGE', KEYS[k], 0, -1)
  for _, m in ipairs(entries) do
    if string.sub(m, 1, #prefix) == prefix then
      redis.call('ZREM', KEYS[k], m)
      local f = {}
      for part in string.gmatch(m .. '|', '([^|]*)|') do f[#f + 1] = part end
      -- f = {token, channel, campaign, item}
      if k == 1 and f[3] ~= '' then redis.call('ZREM', KEYS[3], f[3]) end
      if f[4] ~= '' then redis.call('ZREM', KEYS[4], f[4]) end
      return 1
    end
  end
end
return 0
