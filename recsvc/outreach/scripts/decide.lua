-- One outreach decision for one member: check, and with mode "reserve" record it, atomically.
-- Every key shares the member hash tag, so the script runs unchanged on Redis Cluster.
-- KEYS: 1 sends (zset, marketing), 2 tx (zset, transactional), 3 campaigns (zset),
--       4 state (hash: streak, b:<channel> blocks), 5 profile (hash: tz, c:<channel> consent),
--       6 idempotency record (string), 7 recently pushed items (zset),
--       8 the erasure suppression mark (recsvc.security.erasure; while it exists every message
--         class is refused and nothing is written, not even an idempotency record)
-- ARGV: 1 mode ("check" | "reserve" | "reserve-allowed" | "policy"; "reserve-allowed" reserves
--       but keeps the idempotency record of allowed decisions only, so a refusal is decided
--       afresh next time: PlanCampaign's re-runs), 2 now (epoch ms), 3 channel, 4 campaign,
--       5 message class, 6 reservation token, 7 the time zone Python assumed, 8 quiet hours end
--       (epoch ms, 0 = not quiet now), 9 minimum gap (ms, after the priority rule),
--       10 the request's fingerprint when it carries an idempotency key ('' = no key; the key
--       itself is in KEYS[6]): channel|campaign|class|priority, see below, 11 item, 12 extra;
--       13.. the policy's constant part (recsvc.outreach.policy.Policy.decide_script_args, built
--       once per policy version): 13 default time zone, 14 transactional needs consent (1/0),
--       15 marketing per channel per day, 16 per day, 17 per week, 18 transactional per day,
--       19 sends TTL ms, 20 campaign memory ms, 21 idempotency TTL ms, 22 recently-pushed
--       window ms, then key TTLs (window + margin, summed in Python so they go to PEXPIRE as
--       they came): 23 transactional sends, 24 campaigns, 25 pushed items;
--       26 number of fatigue levels, then per level after_ignored, per day, per week, min gap ms.
-- A send is the zset member "token|channel|campaign|item" scored by epoch ms (short, so small
-- zsets keep the compact ziplist encoding).
-- Returns {"TZ", zone} when Python assumed another time zone than the member's (nothing written),
-- {"E", "IDEMPOTENCY_KEY_REUSED", fingerprint of the first request} when the idempotency key was
-- first used with other parameters (nothing written; an identical retry still replays),
-- else {"D", allowed, reason, next_allowed_ms, token, detail, replayed, extra}.
-- The fingerprint is kept in the idempotency record (field p) and compared before any replay, in
-- the same script as the decision, so two racing calls with one key cannot both be answered.
-- Records written before the fingerprint existed have none and replay as before.
-- Mode "policy" returns the policy as decoded here (tests prove the encoding round trip with it).
local sends, tx, camps, state, profile, idem, pushed = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local suppressed = KEYS[8]
local mode = ARGV[1]
local now = tonumber(ARGV[2])
local channel = ARGV[3]
local campaign = ARGV[4]
local class = ARGV[5]
local token = ARGV[6]
local assumed_tz = ARGV[7]
local quiet_until = tonumber(ARGV[8])
local min_gap = tonumber(ARGV[9])
local idem_text = ARGV[10]
local item = ARGV[11]
local extra = ARGV[12]
local default_tz = ARGV[13]
local requires_consent = ARGV[14] == '1'  -- transactional only; marketing always needs consent
local cap_ch_day, cap_day, cap_week = tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[17])
local tx_cap = tonumber(ARGV[18])
local sends_ttl, camp_mem = tonumber(ARGV[19]), tonumber(ARGV[20])
local idem_ttl, pushed_window = ARGV[21], tonumber(ARGV[22])
local LEVELS = 26  -- fatigue level i: ARGV[LEVELS + 4(i-1) + 1 .. 4], read when needed
local n_levels = tonumber(ARGV[LEVELS])
if mode == 'policy' then
  local out = {default_tz, ARGV[14]}
  for i = 15, LEVELS + 4 * n_levels do out[#out + 1] = string.format('%d', tonumber(ARGV[i])) end
  return out
end
local DAY, WEEK = 86400000, 604800000
local reserve = mode == 'reserve' or mode == 'reserve-allowed'
local use_idem = reserve and idem_text ~= ''
local idem_refusals = mode == 'reserve'

local function fmt(x) return string.format('%d', x) end

-- An erased member (until an operator re-registers them) gets no message of any class, and no
-- send, campaign, pushed item or idempotency record is stored about them.
if redis.call('EXISTS', suppressed) == 1 then
  return {'D', 0, 'SUPPRESSED', '0', '', 'member erased: nothing is sent or recorded', 0, extra}
end

if use_idem then
  local prev = redis.call('GET', idem)
  if prev then
    local rec = cjson.decode(prev)
    if rec.p and rec.p ~= idem_text then
      return {'E', 'IDEMPOTENCY_KEY_REUSED', rec.p}
    end
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

-- one read for the time zone and this channel's consent
local prof = redis.call('HMGET', profile, 'tz', 'c:' .. channel)
local tz = prof[1]
if not tz then tz = default_tz end
if tz ~= assumed_tz then return {'TZ', tz} end

local reason, wait, detail = nil, 0, ''
local sends_stale, tx_stale = false, false  -- set by window(): entries a reservation trims
-- The detail is formatted only for the rule that names the reason (most rules pass).
local function consider(r, t, f, ...)
  if t > now then
    if not reason then reason, detail = r, string.format(f, ...) end
    if t > wait then wait = t end
  end
end

-- A sends zset read whole (it is small: trimmed to its TTL at every reservation, and capped):
-- the entries in the window (now - span, +inf] in score order, the latest score (nil when
-- empty), and whether any entry is old enough (<= now - keep) that a reservation must trim it.
-- One read instead of a window read, a latest-send read and a trim on every reservation.
local function window(key, span, keep)
  local raw = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local out, stale, latest = {}, false, nil
  for i = 1, #raw, 2 do
    local at = tonumber(raw[i + 1])
    if at > now - span then
      out[#out + 1] = {raw[i], at}
    elseif at <= now - keep then
      stale = true
    end
    latest = at
  end
  return out, latest, stale
end

-- The sends of ``list`` in the busiest span-long window that holds time t. A cap holds in every
-- rolling window, and scheduled sends (a best time, a campaign window) count where they fall, not
-- as if already sent: the windows that matter start at a send in (t - span, t] or at t itself
-- (any other window holding t can slide right to one of those without losing a send).
local function busiest(list, span, t)
  local function count(w)
    local c = 0
    for _, e in ipairs(list) do
      if e[2] >= w and e[2] < w + span then c = c + 1 end
    end
    return c
  end
  local best = count(t)
  for _, e in ipairs(list) do
    if e[2] <= t and e[2] > t - span then
      local c = count(e[2])
      if c > best then best = c end
    end
  end
  return best
end

-- 0 while a send now leaves every window under the cap, else the first time one would: a
-- window frees up only when a send leaves it, at that send + span (the last such time always
-- does, so the fallback is never reached with a cap of 1 or more)
local function wait_for(list, cap, span)
  if busiest(list, span, now) < cap then return 0 end
  local first = nil
  for _, e in ipairs(list) do
    local t = e[2] + span
    if t > now and (not first or t < first) and busiest(list, span, t) < cap then first = t end
  end
  return first or now + span
end

-- A cap's refusal, its detail naming the scheduled sends it counted
local function cap(code, list, limit, span, what, span_text)
  local n = busiest(list, span, now)
  if n < limit then return end
  local ahead = 0
  for _, e in ipairs(list) do
    if e[2] > now and e[2] < now + span then ahead = ahead + 1 end
  end
  if ahead > 0 then
    consider(code, wait_for(list, limit, span), '%d of %d %s within %s of this one (%d scheduled)',
      n, limit, what, span_text, ahead)
  else
    consider(code, wait_for(list, limit, span), '%d of %d %s in the last %s', n, limit, what, span_text)
  end
end

local function channel_of(m)
  local a = string.find(m, '|', 1, true)
  local b = string.find(m, '|', a + 1, true)
  return string.sub(m, a + 1, b - 1)
end

local function has_consent()
  local c = prof[2]
  return c and string.sub(c, 1, 1) == '1'
end

if class == 'transactional' then
  if requires_consent and not has_consent() then
    reason, detail = 'NO_CONSENT', 'no recorded consent for ' .. channel
  else
    local day, _, stale = window(tx, DAY, DAY)
    tx_stale = stale
    cap('CAP_TRANSACTIONAL', day, tx_cap, DAY, 'transactional messages', '24h')
    consider('QUIET_HOURS', quiet_until, 'quiet hours in the member time zone')
  end
else
  local st = redis.call('HMGET', state, 'b:' .. channel, 'streak')
  local blocked = st[1]
  local block_until = 0
  if blocked then block_until = tonumber(string.sub(blocked, 3)) end
  if not has_consent() then
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
    local week, latest, stale = window(sends, WEEK, sends_ttl)
    sends_stale = stale
    local day, chday = {}, {}
    for _, e in ipairs(week) do
      if e[2] > now - DAY then
        day[#day + 1] = e
        if channel_of(e[1]) == channel then chday[#chday + 1] = e end
      end
    end
    local last_at = latest  -- the latest send, even older than a week (a gap may be longer)
    cap('CAP_CHANNEL_DAY', chday, cap_ch_day, DAY, channel .. ' marketing messages', '24h')
    cap('CAP_DAY', day, cap_day, DAY, 'marketing messages', '24h')
    cap('CAP_WEEK', week, cap_week, WEEK, 'marketing messages', '7 days')
    -- The gap holds on both sides of this send: after the last one before it, and before the
    -- next one already scheduled (a send at the member's best time), not merely after the latest.
    local prev_at, next_at = nil, nil
    for _, e in ipairs(week) do
      if e[2] <= now then
        if not prev_at or e[2] > prev_at then prev_at = e[2] end
      elseif not next_at or e[2] < next_at then
        next_at = e[2]
      end
    end
    if not prev_at and last_at and last_at <= now then prev_at = last_at end
    -- a send recorded further ahead than any schedule reaches (a campaign window: 7 days,
    -- starting within 7) is a clock gone wrong, not a plan: when in doubt, send less
    local astray = last_at and last_at > now + 2 * WEEK
    local function gap(code, g, why, ...)
      if prev_at then consider(code, prev_at + g, why, ...) end
      if next_at and now > next_at - g then consider(code, next_at + g, why, ...) end
      if astray then consider(code, last_at + g, why, ...) end
    end
    if prev_at then
      consider('MIN_GAP', prev_at + min_gap,
        'last marketing message %d min ago; gap is %d min', (now - prev_at) / 60000, min_gap / 60000)
    end
    if next_at and now > next_at - min_gap then
      consider('MIN_GAP', next_at + min_gap,
        'a marketing message is scheduled in %d min; gap is %d min', (next_at - now) / 60000, min_gap / 60000)
    end
    if astray then
      consider('MIN_GAP', last_at + min_gap,
        'a marketing message is recorded %d min ahead; gap is %d min', (last_at - now) / 60000, min_gap / 60000)
    end
    local streak = tonumber(st[2] or '0')
    local lv = nil
    for i = 1, n_levels do
      local base = LEVELS + (i - 1) * 4
      if streak >= tonumber(ARGV[base + 1]) then lv = base end
    end
    if lv then
      local lday, lweek, lgap = tonumber(ARGV[lv + 2]), tonumber(ARGV[lv + 3]), tonumber(ARGV[lv + 4])
      local why = '%d ignored in a row: at most %d a day, %d a week, %d min apart'
      consider('FATIGUE', wait_for(day, lday, DAY), why, streak, lday, lweek, lgap / 60000)
      consider('FATIGUE', wait_for(week, lweek, WEEK), why, streak, lday, lweek, lgap / 60000)
      gap('FATIGUE', lgap, why, streak, lday, lweek, lgap / 60000)  -- both sides, as MIN_GAP
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
    redis.call('ZADD', tx, ARGV[2], entry)
    if tx_stale then redis.call('ZREMRANGEBYSCORE', tx, '-inf', fmt(now - DAY)) end
    redis.call('PEXPIRE', tx, ARGV[23])
  else
    redis.call('ZADD', sends, ARGV[2], entry)
    if sends_stale then redis.call('ZREMRANGEBYSCORE', sends, '-inf', fmt(now - sends_ttl)) end
    redis.call('PEXPIRE', sends, ARGV[19])
    if campaign ~= '' then
      redis.call('ZADD', camps, ARGV[2], campaign)
      redis.call('ZREMRANGEBYSCORE', camps, '-inf', fmt(now - camp_mem))
      redis.call('PEXPIRE', camps, ARGV[24])
    end
  end
  if item ~= '' then
    redis.call('ZADD', pushed, ARGV[2], item)
    redis.call('ZREMRANGEBYSCORE', pushed, '-inf', fmt(now - pushed_window))
    redis.call('PEXPIRE', pushed, ARGV[25])
  end
end
if use_idem and (allowed == 1 or idem_refusals) then
  redis.call('SET', idem, cjson.encode({a = allowed, r = reason, n = fmt(wait), t = out_token, d = detail,
    m = entry, c = class, e = extra, p = idem_text}), 'PX', idem_ttl)
end
return {'D', allowed, reason, fmt(wait), out_token, detail, 0, extra}
