-- One outreach decision for one member: check, and with mode "reserve" record it, atomically.
-- Every key shares the member hash tag, so the script runs unchanged on Redis Cluster.
-- KEYS: 1 sends (zset, marketing), 2 tx (zset, transactional), 3 campaigns (zset),
--       4 state (hash: streak, b:<channel> blocks), 5 profile (hash: tz, c:<channel> consent),
--       6 idempotency record (string), 7 recently pushed items (zset),
--       8 the erasure suppression mark (recsvc.security.erasure; its existence stops marketing)
-- A send is the zset member "token|channel|campaign|item" scored by epoch ms (short, so small
-- zsets keep the compact ziplist encoding).
-- Returns {"TZ", zone} when Python assumed another time zone than the member's (nothing written),
-- else {"D", allowed, reason, next_allowed_ms, token, detail, replayed, extra}.
local sends, tx, camps, state, profile, idem, pushed = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local suppressed = KEYS[8]
local mode = ARGV[1]
local now = tonumber(ARGV[2])
local channel = ARGV[3]
local campaign = ARGV[4]
local class = ARGV[5]
local token = ARGV[6]
local default_tz = ARGV[7]
local assumed_tz = ARGV[8]
local quiet_until = tonumber(ARGV[9])
local requires_consent = ARGV[10] == '1'
local cap_ch_day = tonumber(ARGV[11])
local cap_day = tonumber(ARGV[12])
local cap_week = tonumber(ARGV[13])
local min_gap = tonumber(ARGV[14])
local tx_cap = tonumber(ARGV[15])
local sends_ttl = tonumber(ARGV[16])
local camp_mem = tonumber(ARGV[17])
local margin = tonumber(ARGV[18])
local idem_ttl = tonumber(ARGV[19])
local idem_text = ARGV[20]
local item = ARGV[21]
local pushed_window = tonumber(ARGV[22])
local extra = ARGV[23]
local n_levels = tonumber(ARGV[24])
local DAY, WEEK = 86400000, 604800000
local reserve = mode == 'reserve'
local use_idem = reserve and idem_text ~= ''

local function fmt(x) return string.format('%d', x) end

if use_idem then
  local prev = redis.call('GET', idem)
  if prev then
    local rec = cjson.decode(prev)
    local live = rec.a == 0
    if not live then
      -- an allowed reservation that was cancelled since is decided afresh
      local key = sends
      if rec.c == 'transactional' then key = tx end
      live = redis.call('ZSCORE', key, rec.m) ~= false
    end
    if live then
      return {'D', rec.a, rec.r, rec.n, rec.t, rec.d, 1, rec.e}
    end
  end
end

local tz = redis.call('HGET', profile, 'tz')
if not tz then tz = default_tz end
if tz ~= assumed_tz then return {'TZ', tz} end

local reason, wait, detail = nil, 0, ''
local function consider(r, t, d)
  if t > now then
    if not reason then reason, detail = r, d end
    if t > wait then wait = t end
  end
end

local function window(key, span)
  local raw = redis.call('ZRANGEBYSCORE', key, '(' .. fmt(now - span), '+inf', 'WITHSCORES')
  local out = {}
  for i = 1, #raw, 2 do out[#out + 1] = {raw[i], tonumber(raw[i + 1])} end
  return out
end

-- 0 while under the cap, else when the oldest entry that must leave the window leaves it
local function wait_for(list, cap, span)
  local n = #list
  if n < cap then return 0 end
  return list[n - cap + 1][2] + span
end

local function channel_of(m)
  local a = string.find(m, '|', 1, true)
  local b = string.find(m, '|', a + 1, true)
  return string.sub(m, a + 1, b - 1)
end

local function has_consent()
  local c = redis.call('HGET', profile, 'c:' .. channel)
  return c and string.sub(c, 1, 1) == '1'
end

if class == 'transactional' then
  if requires_consent and not has_consent() then
    reason, detail = 'NO_CONSENT', 'no recorded consent for ' .. channel
  else
    local day = window(tx, DAY)
    consider('CAP_TRANSACTIONAL', wait_for(day, tx_cap, DAY),
      string.format('%d of %d transactional messages in the last 24h', #day, tx_cap))
    consider('QUIET_HOURS', quiet_until, 'quiet hours in the member time zone')
  end
else
  local blocked = redis.call('HGET', state, 'b:' .. channel)
  local block_until = 0
  if blocked then block_until = tonumber(string.sub(blocked, 3)) end
  if redis.call('EXISTS', suppressed) == 1 then
    reason, detail = 'SUPPRESSED', 'member erased or suppressed: no marketing'
  elseif not has_consent() then
    reason, detail = 'NO_CONSENT', 'no recorded consent for ' .. channel
  elseif block_until > now then
    wait = block_until
    if string.sub(blocked, 1, 1) == 'C' then
      reason, detail = 'BLOCKED_COMPLAINT', 'member complained about ' .. channel
    else
      reason, detail = 'BLOCKED_UNSUBSCRIBED', 'member unsubscribed from ' .. channel
    end
  elseif campaign ~= '' and tonumber(redis.call('ZSCORE', camps, campaign) or '0') > now - camp_mem then
    reason, detail = 'DUPLICATE_CAMPAIGN', 'campaign ' .. campaign .. ' already reached this member'
  else
    local week = window(sends, WEEK)
    local day, chday = {}, {}
    for _, e in ipairs(week) do
      if e[2] > now - DAY then
        day[#day + 1] = e
        if channel_of(e[1]) == channel then chday[#chday + 1] = e end
      end
    end
    local last = redis.call('ZREVRANGE', sends, 0, 0, 'WITHSCORES')
    local last_at = nil
    if last[2] then last_at = tonumber(last[2]) end
    consider('CAP_CHANNEL_DAY', wait_for(chday, cap_ch_day, DAY),
      string.format('%d of %d %s marketing messages in the last 24h', #chday, cap_ch_day, channel))
    consider('CAP_DAY', wait_for(day, cap_day, DAY),
      string.format('%d of %d marketing messages in the last 24h', #day, cap_day))
    consider('CAP_WEEK', wait_for(week, cap_week, WEEK),
      string.format('%d of %d marketing messages in the last 7 days', #week, cap_week))
    if last_at then
      consider('MIN_GAP', last_at + min_gap,
        string.format('last marketing message %d min ago; gap is %d min', (now - last_at) / 60000, min_gap / 60000))
    end
    local streak = tonumber(redis.call('HGET', state, 'streak') or '0')
    local lv = nil
    for i = 1, n_levels do
      local base = 24 + (i - 1) * 4
      if streak >= tonumber(ARGV[base + 1]) then lv = base end
    end
    if lv then
      local lday, lweek, lgap = tonumber(ARGV[lv + 2]), tonumber(ARGV[lv + 3]), tonumber(ARGV[lv + 4])
      local why = string.format('%d ignored in a row: at most %d a day, %d a week, %d min apart',
        streak, lday, lweek, lgap / 60000)
      consider('FATIGUE', wait_for(day, lday, DAY), why)
      consider('FATIGUE', wait_for(week, lweek, WEEK), why)
      if last_at then consider('FATIGUE', last_at + lgap, why) end
    end
    consider('QUIET_HOURS', quiet_until, 'quiet hours in the member time zone')
  end
end

if not reason then reason = 'ALLOWED' end
local allowed = 0
if reason == 'ALLOWED' then allowed = 1 end
local entry, out_token = '', ''
if reserve and allowed == 1 then
  out_token = token
  entry = token .. '|' .. channel .. '|' .. campaign .. '|' .. item
  if class == 'transactional' then
    redis.call('ZADD', tx, now, entry)
    redis.call('ZREMRANGEBYSCORE', tx, '-inf', fmt(now - DAY))
    redis.call('PEXPIRE', tx, DAY + margin)
  else
    redis.call('ZADD', sends, now, entry)
    redis.call('ZREMRANGEBYSCORE', sends, '-inf', fmt(now - sends_ttl))
    redis.call('PEXPIRE', sends, sends_ttl)
    if campaign ~= '' then
      redis.call('ZADD', camps, now, campaign)
      redis.call('ZREMRANGEBYSCORE', camps, '-inf', fmt(now - camp_mem))
      redis.call('PEXPIRE', camps, camp_mem + margin)
    end
  end
  if item ~= '' then
    redis.call('ZADD', pushed, now, item)
    redis.call('ZREMRANGEBYSCORE', pushed, '-inf', fmt(now - pushed_window))
    redis.call('PEXPIRE', pushed, pushed_window + margin)
  end
end
if use_idem then
  redis.call('SET', idem, cjson.encode({a = allowed, r = reason, n = fmt(wait), t = out_token, d = detail,
    m = entry, c = class, e = extra}), 'PX', idem_ttl)
end
return {'D', allowed, reason, fmt(wait), out_token, detail, 0, extra}
