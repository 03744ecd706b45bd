-- keyward's RedisLimiter: one request against all of a key's policies,
-- all or nothing, in one atomic call. The arithmetic of keyward's
-- `Limits::decide` (GCRA with governor's formulas for rates, a balance
-- with a refill for credits), in integer microseconds: Lua numbers are
-- doubles, exact below 2^53 (285 years of microseconds).
--
-- KEYS[i]   the state of policy i: a rate's TAT ("<tat>"), or a balance
--           ("<credits>:<refilled at>"); absent = full.
-- ARGV[1]   the cost (0 reads and writes nothing)
-- ARGV[2]   '' = the server's TIME; a time in microseconds only from the
--           test-only constructor (feature test-util)
-- ARGV[3..] four per policy: 'r', t, tau, burst  |  'c', capacity,
--           refill amount (0: none), refill interval
-- Returns   {all allowed (1/0), n, then per policy: allowed (1/0),
--           remaining, reset or wait in microseconds (-1: never)}

local FAR = 9007199254740991 -- 2^53 - 1: "later than anything"

-- floor(a / b) for integers 0 <= a, 0 < b, exact despite the doubles.
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

-- Integers as Redis arguments: Lua's own `tostring` keeps 14 digits
-- (1.7e+15), `%.0f` every digit of an exact double.
local function int(x)
  return string.format('%.0f', x)
end

local function clamp(x)
  if x > FAR then return FAR end
  return x
end

local cost = tonumber(ARGV[1])
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end

local n = #KEYS
local verdicts = {} -- {allowed, remaining, reset} if the request passes
local unspent = {}  -- the same, spending nothing
local writes = {}   -- what to store if the request passes
local all = true

-- GCRA step (governor's `test_n_all_and_update`): allowed -> true, new
-- TAT, remaining; denied -> false, wait.
local function gcra(tat, c, t, tau)
  local additional = t * (c - 1)
  local earliest = tat + additional - tau
  if earliest < 0 then earliest = 0 end
  if now < earliest then
    return false, earliest - now
  end
  local base = tat
  if now > base then base = now end
  local nxt = base + t + additional
  return true, nxt, idiv(tau - (nxt - now - t), t)
end

local function rate_remaining(tat, t, tau)
  local ok, _, remaining = gcra(tat, 1, t, tau)
  if ok then return remaining + 1 end
  return 0
end

for i = 1, n do
  local a = 3 + (i - 1) * 4
  local kind = ARGV[a]
  local p1, p2, p3 = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local stored = redis.call('GET', KEYS[i])
  if kind == 'r' then
    local t, tau, burst = p1, p2, p3
    local tat = tonumber(stored or '0') or 0
    local left = rate_remaining(tat, t, tau)
    unspent[i] = {1, left, clamp(t * (burst - left))}
    if cost > 0 then
      local ok, x, remaining = gcra(tat, cost, t, tau)
      if ok then
        verdicts[i] = {1, remaining, clamp(t * (burst - remaining))}
        -- Gone once full again: a TAT in the past is a fresh state.
        writes[i] = {int(x), idiv(x - now + 999, 1000) + 1}
      else
        verdicts[i] = {0, left, clamp(x)}
        all = false
      end
    end
  else
    local capacity, amount, every = p1, p2, p3
    local credits, at = capacity, now
    if stored then
      local c, r = string.match(stored, '^(%d+):(%d+)$')
      if c then
        credits, at = tonumber(c), tonumber(r)
        if credits > capacity then credits = capacity end
      end
    end
    -- The refill steps due now.
    if amount > 0 and now > at then
      local steps = idiv(now - at, every)
      if steps > 0 then
        if steps >= idiv(capacity - credits + amount - 1, amount) then
          credits = capacity
        else
          credits = credits + amount * steps
        end
        at = at + steps * every
      end
    end
    -- A full balance is a fresh one: its schedule restarts at the next spend.
    if credits >= capacity then at = now end
    -- The time from now until `needed` more credits are back (-1: never).
    local function wait_for(needed)
      if amount == 0 then return -1 end
      local next_at = at + idiv(needed + amount - 1, amount) * every
      if next_at < now then return 0 end
      return clamp(next_at - now)
    end
    local function full_in(left)
      if left >= capacity then return 0 end
      return wait_for(capacity - left)
    end
    unspent[i] = {1, credits, full_in(credits)}
    if cost > 0 then
      if credits >= cost then
        local left = credits - cost
        local reset = full_in(left)
        verdicts[i] = {1, left, reset}
        if reset == -1 then
          writes[i] = {int(left) .. ':' .. int(at), -1}
        else
          writes[i] = {int(left) .. ':' .. int(at), idiv(reset + 999, 1000) + 1}
        end
      else
        verdicts[i] = {0, credits, wait_for(cost - credits)}
        all = false
      end
    end
  end
end

local out = {0, n}
local chosen = unspent
if cost > 0 then
  if all then
    out[1] = 1
    chosen = verdicts
    for i = 1, n do
      local w = writes[i]
      if w[2] < 0 then
        -- A spent balance that never refills is the record of the spend:
        -- it never expires (a full one, never spent, is not stored).
        redis.call('SET', KEYS[i], w[1])
      else
        redis.call('SET', KEYS[i], w[1], 'PX', int(w[2]))
      end
    end
  else
    -- Refused: nothing is stored; the policies that would have allowed
    -- it say what they have now, the others when they could.
    for i = 1, n do
      if verdicts[i][1] == 0 then unspent[i] = verdicts[i] end
    end
  end
else
  out[1] = 1
end
for i = 1, n do
  out[#out + 1] = chosen[i][1]
  out[#out + 1] = chosen[i][2]
  out[#out + 1] = chosen[i][3]
end
return out
