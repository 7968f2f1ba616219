#!lua name=rating

--[[
Live call state, changed atomically: one FCALL per HTTP request.

Keys (their fields and the call document's keys are named for the agent in cache/call.py)
Every key belongs to one of 16 slot groups and carries its hash tag, `rating:{g<n>}:...` (cache.GROUPS): a
tenant's keys are all in its group (cache.group_of), so on a Redis Cluster one FCALL touches one slot. The
agent names every key, and every key a function touches is one of its KEYS: the call's and the group's, then
its parties' account and open-call keys (those are also kept in the parties, `k`, `o`, `ox`, so a function
can tell which it needs). A function whose declared keys lack one of its call's parties' changes nothing
and answers `keys` with the list it needs (see undeclared); nothing here builds a key.
  per tenant, <t> being len(tenant):tenant
  account  rating:{g}:a:<t>:<account_tag>   HASH  balance, reserved (held by open calls), cv (the newest
                 catalog change of the account alone, see publish)
  open     rating:{g}:oi:<t>:<account_tag>, rating:{g}:oo:...   SET   the call keys an account holds open
                 (authorized or running), one set per direction (inbound, outbound): their sizes are what
                 the concurrency limits count
  call     rating:{g}:c:<t>:<transaction_tag>   HASH  an open call (authorized, begun): its state in fields
                 (st ci tn tt ta u bal rv p tb ts tu), p being the parties as the agent sent them and ts/tu
                 Redis' clock (TIME) when it was last written; a final call: doc (this library's JSON state
                 of the call). Both: meta (the request fields, opaque JSON). `ci` is the call's identity,
                 given by the agent when the call is created: a transaction tag used again after its call
                 became final (refused, expired, ...) or left Redis names a new call, whose records never
                 replace the earlier call's.
  once per group
  deadlines rating:{g}:deadlines   ZSET call key -> when the agent must expire or end the call by itself (ms)
  outbox   rating:{g}:outbox   STREAM what PostgreSQL must learn: e=txn (a call in its final state, with
                 the balance moves it made: see ledger) or e=ledger (a balance move of its own: rating_balance). An open call (authorized, begun) is only in its call hash; a
                 reader that must list it writes its current state itself (agent/store/writer.py catch_up),
                 versioned by Redis' clock when the state was written (ts/tu; cm/cu in documents).
  catalog  rating:{g}:catalog   STRING the newest catalog change published by a writer
                 (agent/store/changes.py), written to every group's copy (cache.publish_catalog): a call
                 planned on an older catalog is answered `stale` before anything is written, and re-planned;
                 a change of accounts alone moves their `cv` instead, making stale only their calls
  broken   rating:{g}:calls:broken   SET   call keys the expiry failed to finish, for an operator to look at
  stats    rating:{g}:stats   HASH  totals for metrics (summed over the groups): running (begun calls),
                 charges and charged (count and amount charged), refunded (amount). Open calls (authorized or
                 running) are the members of `deadlines`: every open call has exactly one deadline.
  (outside this library: rating:{g}:outbox:dead, the writer's dead letters, and rating:{g}:outbox:read,
  the newest entry it read and had replicated; rating:libraries,
  rating:followers and rating:kamailio:seen, global hashes no function touches)

An authorization is the hot path: it reads the call and the parties' accounts and writes only what it
must (reservation, open-call set, deadline, call fields). Every write also costs Redis an AOF append.

A call moves authorized -> begun -> ended, or ends as refused, rolledback, cancelled (ended before it
began), expired (never began) or recorded (a one-shot record). Repeating any step answers as the first
time and changes nothing.

Pricing walks the price schedule the agent sends with each party (agent/pricing/rate.py, Schedule):
{connect_fee, block_s, block_price, increment_s, increment_price, minimum_s, cap (-1: none)}, and for a
pricelist with decimal prices two more, {unit (10^scale), rounding (0 up, 1 half_even, 2 down)}: the
amounts are then in 1/unit of money and the capped total is rounded once (money). The kernel
makes it from the rate (billing scheme, free increments, minimum, cap); this library only walks it, and the
tests drive these functions against the kernel's walks and decision (agent/pricing/decision.py). A party
priced by time windows sends a timeline instead: {{start_s, nine numbers}, ...} (see in_force): its units
and reservation cover every answer second within the authorization's TTL (grant, hold), its charge is walked
from the answer, and a begin outside those seconds checks the reservation again (rebudget). Every amount
stays below 2**53 (exact in a double): rates are bounded at import for calls up to LONGEST_CALL seconds,
and --max-units may not exceed it (settings_of); a scaled amount stays below 2^53 - unit, so a budget
(at most the fee of a call the balance cannot pay + unit - 1) is exact too.
]]

local FINAL = {ended = true, refused = true, rolledback = true, cancelled = true, expired = true, recorded = true}
-- states after which the same transaction tag may be authorized afresh
local REUSABLE = {refused = true, rolledback = true, cancelled = true, expired = true}

-- the running function's group's stats hash and broken set: keys of its KEYS, set by each entry point
-- before anything else (a function runs alone, so this never mixes two calls' keys)
local STATS, BROKEN
-- what the running function counted in STATS, written once by save (see count): reset by each entry point
local COUNTED = {}

local function num(value)
  return tonumber(value) or 0
end

local LONGEST_CALL = 10000000  -- agent/pricing/rate.py LONGEST_CALL

-- agent/pricing/rate.py money: a non-negative amount below 2^53 in 1/unit of money, rounded once. fmod is
-- exact on doubles, and the amount less its rest is a multiple of unit, so the quotient is exact too.
local function money(amount, unit, rounding)
  local rest = math.fmod(amount, unit)
  local whole = (amount - rest) / unit
  if rest == 0 or rounding == 2 then
    return whole
  end
  if rounding == 1 and (rest * 2 < unit or rest * 2 == unit and math.fmod(whole, 2) == 0) then
    return whole
  end
  return whole + 1
end

-- agent/pricing/rate.py budget: the largest amount in 1/unit that rounds to at most `available` money
-- (available * unit < 2^53: called only when the balance does not pay the longest call, see max_units)
local function budget(available, unit, rounding)
  if rounding == 0 then
    return available * unit
  end
  if rounding == 2 then
    return available * unit + unit - 1
  end
  return available * unit + unit / 2 - math.fmod(available, 2)
end

-- Time windows (agent/pricing/rate.py Timeline): a party priced by windowed rates sends a list of pieces
-- {start (epoch s), the nine numbers of a schedule}, each in force from its start on; the walks below follow
-- rate.py in_force, walk_amount_at, walk_units_at, the call's seconds counted from its answer (start_ms).
-- A timeline as {start, schedule} per piece, its schedules copied once, for pieces_at: the pieces in force
-- for an answer within epoch second `second` (the answer's milliseconds change no offset).
local function prepared(line)
  local found = {}
  for index, piece in ipairs(line) do
    found[index] = {piece[1], {piece[2], piece[3], piece[4], piece[5], piece[6], piece[7], piece[8], piece[9], piece[10]}}
  end
  return found
end

local function pieces_at(line, second)
  local found = {}
  for index, piece in ipairs(line) do
    local offset = 0
    if index > 1 then
      offset = math.max(0, piece[1] - second)
    end
    if #found > 0 and offset <= found[#found][1] then
      found[#found] = {offset, piece[2]}
    else
      found[#found + 1] = {offset, piece[2]}
    end
  end
  return found
end

local function in_force(line, start_ms)
  return pieces_at(prepared(line), math.floor(start_ms / 1000))
end

-- rate.py _priced: the price of the first `seconds` billed seconds, connect fee, minimum and cap aside
local function priced(s, seconds)
  if seconds <= 0 then
    return 0
  end
  if seconds <= s[2] then
    return s[3]
  end
  return s[3] + math.ceil((seconds - s[2]) / s[4]) * s[5]
end

local function fee_at(pieces, duration)
  local head = pieces[1][2]
  local billed = math.max(duration, head[6], 0)
  local amount = head[1]
  for index, piece in ipairs(pieces) do
    if piece[1] >= billed then
      break
    end
    local upto = billed
    if pieces[index + 1] and pieces[index + 1][1] < billed then
      upto = pieces[index + 1][1]
    end
    amount = amount + priced(piece[2], upto) - priced(piece[2], piece[1])
  end
  if head[7] >= 0 and amount > head[7] then
    amount = head[7]
  end
  if head[8] > 1 then
    return money(amount, head[8], head[9])
  end
  return amount
end

local function units_at(pieces, available, cap)
  local head = pieces[1][2]
  local free = true
  for _, piece in ipairs(pieces) do
    local s = piece[2]
    if s[1] ~= 0 or s[3] ~= 0 or s[5] ~= 0 then
      free = false
    end
  end
  if free or head[7] == 0 then
    return cap
  end
  if available <= 0 or available < fee_at(pieces, 0) then
    return 0
  end
  if fee_at(pieces, cap) <= available then
    return cap
  end
  local spare = available - head[1]
  if head[8] > 1 then
    spare = budget(available, head[8], head[9]) - head[1]
  end
  for index, piece in ipairs(pieces) do
    local s = piece[2]
    local reach = spare + priced(s, piece[1])  -- the most this schedule's price may reach in the segment
    local paid_through = false
    if pieces[index + 1] then
      local upto = priced(s, pieces[index + 1][1])
      if upto <= reach then
        spare = reach - upto
        paid_through = true
      end
    end
    if not paid_through then
      if reach < s[3] or s[5] == 0 then
        return 0
      end
      local paid = math.floor((reach - s[3]) / s[5])
      if paid * s[5] > reach - s[3] then
        paid = paid - 1
      end
      return s[2] + paid * s[4]
    end
  end
  return cap
end

-- agent/pricing/rate.py walk_fee (walk_fee_at for a timeline, answered at start_ms)
local function fee(tariff, duration, start_ms)
  if type(tariff) ~= 'table' then
    return 0
  end
  if type(tariff[1]) == 'table' then
    return fee_at(in_force(tariff, start_ms or 0), duration)
  end
  local s = tariff
  local billed = math.max(duration, s[6], 0)
  local amount = s[1]
  if billed > 0 then
    amount = amount + s[3]
    if billed > s[2] then
      amount = amount + math.ceil((billed - s[2]) / s[4]) * s[5]
    end
  end
  if s[7] >= 0 and amount > s[7] then
    amount = s[7]
  end
  if s[8] and s[8] > 1 then
    return money(amount, s[8], s[9])
  end
  return amount
end

-- agent/pricing/rate.py walk_units (walk_units_at for a timeline, the call answered at start_ms)
local function max_units(tariff, available, cap, start_ms)
  if type(tariff[1]) == 'table' then
    return units_at(in_force(tariff, start_ms or 0), available, cap)
  end
  local s = tariff
  if s[7] == 0 or (s[1] == 0 and s[3] == 0 and s[5] == 0) then
    return cap
  end
  if available <= 0 or available < fee(s, 0) then
    return 0
  end
  if fee(s, cap) <= available then
    return cap
  end
  local spare = available - s[1] - s[3]
  if s[8] and s[8] > 1 then
    spare = budget(available, s[8], s[9]) - s[1] - s[3]
  end
  if spare < 0 or s[5] == 0 then
    return 0
  end
  local paid = math.floor(spare / s[5])
  if paid * s[5] > spare then  -- a quotient rounded up to the next integer by the division of doubles
    paid = paid - 1
  end
  return s[2] + paid * s[4]
end

-- The answer seconds within first..last on either side of one where a walk of `line` steps or bends as the
-- answer moves: a boundary's offset reaching 0, the end of a block or of an increment of the schedules on
-- either side of it (none inside per-second increments: those move linearly), or one of `lengths` (billed
-- seconds). Between two of them every amount a walk adds is linear in the answer second, so the dearest
-- answer for given seconds is one of them (dearest).
local function kinks(line, first, last, lengths)
  local seen, list = {}, {}
  local function add(second)
    if second >= first and second <= last and not seen[second] then
      seen[second] = true
      list[#list + 1] = second
    end
  end
  add(first)
  add(last)
  for index = 2, #line do
    local start = line[index][1]
    local low, high = start - last - 1, start - first + 1  -- the offsets this boundary takes within the TTL
    local function at(offset)
      add(start - offset)
      add(start - offset - 1)
    end
    at(0)
    for _, length in ipairs(lengths) do
      at(length)
    end
    for piece = index - 1, index do
      local s = line[piece][2]
      at(s[2])
      if s[4] > 1 and s[5] ~= 0 and s[2] <= high then
        local offset = s[2] + math.max(0, math.ceil((low - s[2]) / s[4])) * s[4]
        while offset <= high do
          at(offset)
          offset = offset + s[4]
        end
      end
    end
  end
  return list
end

-- The most `units` seconds cost over the answer seconds first..last, and the answer second that costs it.
local function dearest(line, first, last, units)
  local lengths, most, worst = {units}, -1, first
  for index, piece in ipairs(line) do
    lengths[index + 1] = piece[2][6]
  end
  for _, second in ipairs(kinks(line, first, last, lengths)) do
    local amount = fee_at(pieces_at(line, second), units)
    if amount > most then
      most, worst = amount, second
    end
  end
  return most, worst
end

-- The last dearest answer, by tariff (the decoded table of one party of the call being decided) and seconds:
-- what grant last checked is what hold reserves for a party paying the call's units.
local last_dearest = {}

local function dearest_of(tariff, line, first, last, units)
  local memo = last_dearest
  if memo[1] == tariff and memo[2] == units and memo[3] == first and memo[4] == last then
    return memo[5], memo[6]
  end
  local most, worst = dearest(line or prepared(tariff), first, last, units)
  last_dearest = {tariff, units, first, last, most, worst}
  return most, worst
end

-- A call may be answered in any second from its authorization (at, ms) to the end of its TTL (ttl, ms), in
-- a dearer window than at the authorization: a timeline party is granted the fewest units its balance buys
-- over those answer seconds (grant) and holds the most those units cost over them (hold), so no answer
-- within the TTL is charged more than was reserved (agent/pricing/decision.py covered_units, covered_fee,
-- which try every second; here only the kinks, see there).
local function grant(tariff, available, cap, at, ttl)
  if type(tariff[1]) ~= 'table' or #tariff < 2 or ttl <= 0 then
    return max_units(tariff, available, cap, at)
  end
  local line = prepared(tariff)
  local first, last = math.floor(at / 1000), math.floor((at + ttl) / 1000)
  if available <= 0 then  -- refused, unless every answer second is free: each kink second says
    local units, lengths = cap, {cap}
    for index, piece in ipairs(line) do
      lengths[index + 1] = piece[2][6]
    end
    for _, second in ipairs(kinks(line, first, last, lengths)) do
      units = math.min(units, units_at(pieces_at(line, second), available, cap))
    end
    return units
  end
  -- units_at gives the most seconds whose fee the balance pays: the fewest over the answer seconds are the
  -- most whose dearest answer the balance pays. From the first second's, each round takes the units of the
  -- dearest answer for the current ones (fewer, as that answer does not pay them) until the balance pays it.
  local units = units_at(pieces_at(line, first), available, cap)
  while units > 0 do
    local most, worst = dearest_of(tariff, line, first, last, units)
    if most <= available then
      break
    end
    units = math.min(units - 1, units_at(pieces_at(line, worst), available, cap))
  end
  return math.max(units, 0)
end

local function hold(tariff, units, at, ttl)
  if type(tariff) ~= 'table' or type(tariff[1]) ~= 'table' or #tariff < 2 or ttl <= 0 then
    return fee(tariff, units, at)
  end
  local most = dearest_of(tariff, nil, math.floor(at / 1000), math.floor((at + ttl) / 1000), units)
  return most
end

-- floor(available * percent / 100) without leaving the exact range of doubles
local function share_of(available, percent)
  if percent >= 100 or available <= 0 then
    return available
  end
  local hundreds = math.floor(available / 100)
  return hundreds * percent + math.floor((available - hundreds * 100) * percent / 100)
end

local function duration_of(begin_ms, end_ms)
  if end_ms <= begin_ms then
    return 0
  end
  return math.ceil((end_ms - begin_ms) / 1000)
end

-- An integer as Redis and JSON want it: Lua formats numbers as floats (`%.17g`, `1e+12`), slowly.
local function int(value)
  return string.format('%d', value)
end

-- A call's state as a table and its meta text, from either form of its hash (see Keys); nil if none.
-- `doc.fields` marks the open-call form.
local function load(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then
    return nil
  end
  local hash = {}
  for index = 1, #flat, 2 do
    hash[flat[index]] = flat[index + 1]
  end
  local doc
  if hash.doc then
    doc = cjson.decode(hash.doc)
  else
    local reserved = {}
    for amount in string.gmatch(hash.rv or '', '[^,]+') do
      reserved[#reserved + 1] = amount
    end
    doc = {st = hash.st, ci = hash.ci, tn = hash.tn, tt = hash.tt, ck = key, ta = tonumber(hash.ta), u = num(hash.u),
           bal = num(hash.bal), rs = '', rt = '', tb = tonumber(hash.tb), p = cjson.decode(hash.p or '[]'),
           rv = reserved, fields = true}
  end
  if type(doc.rv) == 'table' and type(doc.p) == 'table' then  -- reservations kept beside the parties
    for index, party in ipairs(doc.p) do
      party.rv = tonumber(doc.rv[index]) or 0
    end
  end
  doc.rv = nil
  return doc, hash.meta
end

-- An open call's state is versioned by Redis' clock when it was written (ts, tu: TIME as it answers, kept
-- as text), which sorts below the outbox id of any later change of the call (agent/store/records.py).

-- Writes what a begin changes in an open call of the field form.
local function save_begun(key, doc)
  local clock = redis.call('TIME')
  if doc.moved then  -- a begin that topped up reservations or cut the units (rebudget): in the same write
    local reserved = {}
    for index, party in ipairs(doc.p) do
      reserved[index] = int(num(party.rv))
    end
    redis.call('HSET', key, 'st', doc.st, 'tb', int(doc.tb), 'ts', clock[1], 'tu', clock[2], 'u', int(doc.u),
      'rv', table.concat(reserved, ','))
  else
    redis.call('HSET', key, 'st', doc.st, 'tb', int(doc.tb), 'ts', clock[1], 'tu', clock[2])
  end
end

-- The document of a call refused in this authorization (nothing reserved, never begun), written as text
-- around the parties exactly as the agent sent them: cjson formats every number as a float, slowly.
local function encode_refused(doc, parties)
  return table.concat({'{"st":', cjson.encode(doc.st), ',"ci":', cjson.encode(doc.ci), ',"tn":', cjson.encode(doc.tn), ',"tt":',
    cjson.encode(doc.tt), ',"ck":', cjson.encode(doc.ck), ',"ta":', int(doc.ta), ',"rs":', cjson.encode(doc.rs),
    ',"rt":', cjson.encode(doc.rt), ',"bal":', int(doc.bal), ',"u":0,"p":', parties, '}'})
end

-- Counts in STATS what the running function did (running calls, charges, amounts), written at once by save:
-- the counts in one HSET after reading them (a read costs Redis a fraction of a write), each amount with its
-- own HINCRBY (exact as integers, whatever the total reaches); an end of one charged party writes two
-- fields' worth instead of three HINCRBY.
local COUNTS, AMOUNTS = {'running', 'charges'}, {'charged', 'refunded'}

local function count(field, amount)
  COUNTED[field] = (COUNTED[field] or 0) + amount
end

local function write_counted()
  local fields = {}
  for _, field in ipairs(COUNTS) do
    if (COUNTED[field] or 0) ~= 0 then
      fields[#fields + 1] = field
    end
  end
  if #fields == 1 then
    redis.call('HINCRBY', STATS, fields[1], int(COUNTED[fields[1]]))
  elseif #fields > 1 then
    local now, changes = redis.call('HMGET', STATS, unpack(fields)), {}
    for index, field in ipairs(fields) do
      changes[#changes + 1] = field
      changes[#changes + 1] = int(num(now[index]) + COUNTED[field])
    end
    redis.call('HSET', STATS, unpack(changes))
  end
  for _, field in ipairs(AMOUNTS) do
    if (COUNTED[field] or 0) ~= 0 then
      redis.call('HINCRBY', STATS, field, int(COUNTED[field]))
    end
  end
  COUNTED = {}
end

-- Stores a call in a final state as a document (replacing the hash), sends it to the outbox and keeps it
-- `retention` seconds for retries and reads. `meta`: the call's meta text. `encode`: how the document
-- becomes text (encode_refused for a call refused at once; cjson.encode by default). An open call stored as a
-- document (by versions before the field form) is written back the same way, its version in cm (ms) and
-- cu (µs within it).
local function save(key, doc, outbox, retention, meta, encode)
  local moves, moved_at = doc.moves, doc.moved_at  -- (never part of the document)
  doc.fields, doc.moves, doc.moved_at = nil, nil, nil
  write_counted()
  if not FINAL[doc.st] then
    local now = redis.call('TIME')
    doc.cm = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
    doc.cu = tonumber(now[2]) % 1000
    redis.call('HSET', key, 'doc', cjson.encode(doc))
    return
  end
  local encoded = encode and encode(doc) or cjson.encode(doc)
  meta = meta or '{}'
  redis.call('DEL', key)
  redis.call('HSET', key, 'doc', encoded, 'meta', meta)
  redis.call('EXPIRE', key, retention)
  if moves then
    redis.call('XADD', outbox, '*', 'e', 'txn', 'doc', encoded, 'meta', meta, 'tn', doc.tn,
      'mv', '[' .. table.concat(moves, ',') .. ']', 'at', int(moved_at))
  else
    redis.call('XADD', outbox, '*', 'e', 'txn', 'doc', encoded, 'meta', meta)
  end
end

-- A balance move of the call being decided, for the ledger: carried in the call's own outbox entry (`mv`:
-- [account_tag, kind, amount, balance after] per move, `at` when; cache/call.py moves), which save writes
-- once, rather than an entry of its own per move (one XADD a charged party fewer).
local function ledger(doc, party, kind, amount, balance, at)
  local moves = doc.moves or {}
  moves[#moves + 1] = '[' .. cjson.encode(party.a) .. ',"' .. kind .. '",' .. int(amount) .. ',' .. int(balance) .. ']'
  doc.moves, doc.moved_at = moves, at
end

local function parties_of(doc)
  if type(doc.p) ~= 'table' then
    return {}
  end
  return doc.p
end

-- The keys the parties of a call need, appended to `list`: each party's account and open-call set, and with
-- `other` (a decision under a total limit) its other direction's set too.
local function wanted(parties, list, other)
  for _, party in ipairs(parties) do
    list[#list + 1] = party.k
    list[#list + 1] = party.o
    if other and party.ox then
      list[#list + 1] = party.ox
    end
  end
  return list
end

-- nil when every key of `list` is declared (KEYS from `first` on); else the reply `keys` naming them all
-- (once each, after the six reply fields): the agent sends the same call again with them, nothing written.
-- A few keys against a few: comparing interned strings costs less than building a set.
local function undeclared(keys, first, list)
  for _, key in ipairs(list) do
    local found = false
    for index = first, #keys do
      if keys[index] == key then
        found = true
        break
      end
    end
    if not found then
      local answer, seen = {0, 'keys', '', '', 0, 0}, {}
      for _, name in ipairs(list) do
        if not seen[name] then
          seen[name] = true
          answer[#answer + 1] = name
        end
      end
      return answer
    end
  end
end

-- Gives back what an open call holds: its reservation and its place among the account's open calls. With
-- `charging`, the reservation is given back by the charge that follows, in the same write as the balance.
local function release(doc, charging)
  if doc.st == 'begun' then
    count('running', -1)
  end
  for _, party in ipairs(parties_of(doc)) do
    if num(party.rv) ~= 0 then
      if charging then
        party.held = num(party.rv)
      else
        redis.call('HINCRBY', party.k, 'reserved', int(-party.rv))
      end
    end
    party.rv = 0
    if party.o and doc.ck then
      redis.call('SREM', party.o, doc.ck)
    end
  end
end

-- Charges every party for `duration` seconds (fees are already capped by the caller) and gives back what
-- release(doc, true) left it: a party charged and holding a reservation is written once (balance and
-- reserved in one HSET after reading both, exact: every amount stays below 2^53).
local function charge(doc, duration, outbox, at, begin_ms)
  for _, party in ipairs(parties_of(doc)) do
    local amount = fee(party.r, duration, begin_ms)  -- a timeline is priced from the answer
    local held = party.held or 0
    party.f, party.held = amount, nil
    if amount ~= 0 then
      local balance
      if held ~= 0 then
        local now = redis.call('HMGET', party.k, 'balance', 'reserved')
        balance = num(now[1]) - amount
        redis.call('HSET', party.k, 'balance', int(balance), 'reserved', int(num(now[2]) - held))
      else
        balance = redis.call('HINCRBY', party.k, 'balance', -amount)
      end
      ledger(doc, party, 'charge', -amount, balance, at)
      count('charges', 1)
      count('charged', amount)
    elseif held ~= 0 then
      redis.call('HINCRBY', party.k, 'reserved', int(-held))
    end
  end
end

local function reply(ok, doc)
  return {ok and 1 or 0, doc.st, doc.rs or '', doc.rt or '', doc.u or 0, doc.bal or 0}
end

local function windowed(party)
  return party.c == 1 and type(party.r) == 'table' and type(party.r[1]) == 'table'
end

-- A call answered at answer_ms whose reservation does not pay its granted units from there (a timeline party
-- answered outside the seconds its authorization covered: a begin after the TTL that came before the
-- expiry, or before the authorization): each such party's reservation is topped up from its available
-- balance, and where that does not pay, the units are cut to what reservation and balance pay (the agent's
-- own end then stops the charge there). Sets doc.moved when it changed something (agent/pricing/decision.py
-- answered). `doc` holds its parties.
local function rebudget(doc, answer_ms)
  local parties, short = parties_of(doc), false
  for _, party in ipairs(parties) do
    if windowed(party) and fee(party.r, doc.u, answer_ms) > num(party.rv) then
      short = true
    end
  end
  if not short then
    return
  end
  local units, spare = doc.u, {}
  for index, party in ipairs(parties) do
    if windowed(party) then
      local held = redis.call('HMGET', party.k, 'balance', 'reserved')
      spare[index] = math.max(num(held[1]) - num(held[2]) + num(party.cr), 0)
      units = math.min(units, max_units(party.r, num(party.rv) + spare[index], doc.u, answer_ms))
    end
  end
  for index, party in ipairs(parties) do
    if windowed(party) then
      local extra = math.min(math.max(fee(party.r, units, answer_ms) - num(party.rv), 0), spare[index])
      if extra > 0 then
        redis.call('HINCRBY', party.k, 'reserved', int(extra))
        party.rv = num(party.rv) + extra
      end
    end
  end
  doc.u, doc.moved = units, true
end

local function begin_call(doc, key, deadlines, begin_ms, grace)
  if doc.st == 'authorized' then
    if doc.p then  -- the fast path of authorize loads no parties: a call with a timeline never takes it
      rebudget(doc, begin_ms)
    end
    doc.st = 'begun'
    doc.tb = begin_ms
    redis.call('HINCRBY', STATS, 'running', '1')
    redis.call('ZADD', deadlines, int(begin_ms + doc.u * 1000 + grace), key)
    return true
  end
  return doc.st == 'begun' or doc.st == 'ended'
end

-- Decides a new authorization from the parties planned by the agent (limits, balances, units).
local function decide(parties, reason, refused_tag, share, cap, version, at, ttl)
  local units = cap
  local balance = 0
  for index, party in ipairs(parties) do
    local held = redis.call('HMGET', party.k, 'balance', 'reserved', 'cv')
    if held[3] and tonumber(held[3]) > version then  -- the account changed after the plan's catalog
      return nil, index, tonumber(held[3])
    end
    if not held[1] then  -- no live balance: never made up here (see unseeded)
      return nil, index
    end
    local available = num(held[1]) - num(held[2])
    if index == 1 then
      balance = available
    end
    if reason == '' then
      -- open calls are counted only under a limit: `o` holds the party's calls in its direction, `ox`
      -- (sent with a total limit) those in the other one
      local limit = party.i == 1 and party.mi or party.mo
      local own = 0
      if party.mt >= 0 or limit >= 0 then
        own = redis.call('SCARD', party.o)
      end
      if party.mt >= 0 and own + (party.ox and redis.call('SCARD', party.ox) or 0) >= party.mt then
        reason = 'TOO_MANY_RUNNING_TRANSACTIONS'
      elseif limit >= 0 and own >= limit then
        reason = party.i == 1 and 'TOO_MANY_RUNNING_INBOUND_TRANSACTIONS' or 'TOO_MANY_RUNNING_OUTBOUND_TRANSACTIONS'
      elseif party.c == 1 then
        local granted = 0
        if type(party.r) == 'table' then
          granted = grant(party.r, share_of(available + party.cr, share), cap, at, ttl)
        end
        if granted <= 0 then
          reason = 'BALANCE_INSUFFICIENT'
        elseif granted < units then
          units = granted
        end
      end
      if reason ~= '' then
        refused_tag = party.a
      end
    end
  end
  return reason, refused_tag, units, balance
end

-- An agent's settings as it sends them with every authorization ("ttl_ms,share_pct,cap,retention_s,
-- grace_ms"), converted once per distinct text: five number conversions per call cost more than passing
-- the other arguments. Agents differ in their settings only by configuration, so few texts are ever seen.
local settings_seen, settings_count = {}, 0

local function settings_of(text)
  local found = settings_seen[text]
  if found then
    return found
  end
  local ttl, share, cap, retention, grace = string.match(text, '^(%d+),(%d+),(%d+),(%d+),(%d+)$')
  if not grace then
    error('rating: settings must be five integers separated by commas, got ' .. text)
  end
  if tonumber(cap) > LONGEST_CALL then  -- amounts are bounded for calls up to that long only
    error('rating: --max-units must be at most ' .. LONGEST_CALL .. ', got ' .. cap)
  end
  if settings_count >= 64 then
    settings_seen, settings_count = {}, 0
  end
  found = {ttl = tonumber(ttl), share = tonumber(share), cap = tonumber(cap), retention = tonumber(retention),
           grace = tonumber(grace)}
  settings_seen[text] = found
  settings_count = settings_count + 1
  return found
end

-- The reply to a call planned on a catalog older than the one published: nothing was done; the balance
-- field carries the version to catch up with. Changes of accounts alone are published in the account
-- (`cv`, see publish), so they make stale only the calls of that account; `refused` is the key of an
-- account the plan did not find or refused (one created or changed since the plan's catalog, perhaps).
local function stale(catalog_key, version, refused)
  local published = tonumber(redis.call('GET', catalog_key) or '0')
  if refused then
    published = math.max(published, tonumber(redis.call('HGET', refused, 'cv') or '0'))
  end
  if published > version then
    return {0, 'stale', '', '', 0, published}
  end
end

-- The reply to a call one of whose accounts has no live balance here (new to this Redis, or lost with
-- its data): nothing was done; the agent seeds it from PostgreSQL (its ledger's balance, never a catalog
-- snapshot) and asks again. The units field carries the party's position.
local function unseeded(parties, index)
  return {0, 'unseeded', '', parties[index].a, index, 0}
end

-- KEYS call, deadlines, outbox, catalog, stats[, the refused account (see stale), given with a refused tag],
--      then the parties' keys (see wanted: with their other direction's open-call sets)
-- ARGV now_ms, settings (see settings_of), begin(0/1), tenant, transaction_tag, parties_json ('' when the
--      agent could not plan: a begin with only the transaction tag; '-' for a begin not planned yet, see
--      below), meta_json, refusal reason ('' if none), refused tag, at_ms (authorization or begin time),
--      catalog version planned on, call identity (for a call created here)
-- A begin usually follows its authorization: the agent sends it unplanned first ('-'), and it begins the call
-- Redis holds; only when there is none, or one a new authorization may replace, it answers `missing`, and
-- the agent plans the call and sends it again (the begin then authorizes the call too).
local function authorize(keys, args)
  local key, deadlines, outbox = keys[1], keys[2], keys[3]
  STATS, COUNTED = keys[5], {}
  local settings = settings_of(args[2])
  local now, ttl, share, cap = tonumber(args[1]), settings.ttl, settings.share, settings.cap
  local beginning, retention, grace, at = args[3] == '1', settings.retention, settings.grace, tonumber(args[10])
  if beginning then
    -- an open call in field form is begun from three of its fields: its parties and meta are neither
    -- read nor decoded; unless a party has a timeline ('[[' in its text: a false match only costs the full
    -- path), whose reservation the begin checks against its answer (rebudget)
    local held = redis.call('HMGET', key, 'st', 'u', 'bal', 'p')
    if held[1] == 'begun' or held[1] == 'authorized' and not string.find(held[4] or '', '[[', 1, true) then
      local open = {st = held[1], u = num(held[2]), bal = num(held[3]), rs = '', rt = ''}
      local ok = begin_call(open, key, deadlines, at, grace)
      if open.st ~= held[1] then
        save_begun(key, open)
      end
      return reply(ok, open)
    end
  end
  local unplanned = args[6] == '' or args[6] == '-'
  local doc, meta = load(key)
  local stored = doc
  if doc and (not REUSABLE[doc.st] or args[6] == '') then
    if not beginning then
      return reply(not REUSABLE[doc.st], doc)
    end
    if doc.st == 'authorized' then  -- its begin may top up reservations (rebudget)
      local missing = undeclared(keys, 6, wanted(parties_of(doc), {}, false))
      if missing then
        return missing
      end
    end
    local was = doc.st
    local ok = begin_call(doc, key, deadlines, at, grace)
    if doc.st ~= was then
      if doc.fields then
        save_begun(key, doc)
      else
        save(key, doc, outbox, retention, meta)
      end
    end
    return reply(ok, doc)
  end
  if unplanned then
    return {0, 'missing', '', '', 0, 0}
  end
  local version = tonumber(args[11])
  local outdated = stale(keys[4], version, args[9] ~= '' and keys[6] or nil)
  if outdated then
    return outdated
  end
  local parties = cjson.decode(args[6])
  local missing = undeclared(keys, 6, wanted(parties, {}, true))
  if missing then
    return missing
  end
  local reason, refused_tag, units, balance = decide(parties, args[8], args[9], share, cap, version, at, ttl)
  if reason == nil then
    if units then
      return {0, 'stale', '', '', 0, units}
    end
    return unseeded(parties, refused_tag)
  end
  doc = {ci = args[12], tn = args[4], tt = args[5], ck = key, ta = at, rs = reason, rt = refused_tag, bal = balance, p = parties}
  if reason ~= '' then
    doc.st = 'refused'
    doc.u = 0
    save(key, doc, outbox, retention, args[7], function(state) return encode_refused(state, args[6]) end)
    return reply(false, doc)
  end
  local reserved = {}
  doc.st = 'authorized'
  doc.u = units
  for index, party in ipairs(parties) do
    party.rv = 0
    if party.c == 1 then
      party.rv = hold(party.r, units, at, ttl)  -- a timeline: the most over the answer seconds
    end
    reserved[index] = int(party.rv)
    if party.rv ~= 0 then
      redis.call('HINCRBY', party.k, 'reserved', reserved[index])
    end
    redis.call('SADD', party.o, key)
  end
  redis.call('ZADD', deadlines, int(now + ttl), key)
  local ok = true
  if beginning then
    ok = begin_call(doc, key, deadlines, at, grace)
  end
  if stored then  -- an earlier call's final document, expiring
    redis.call('DEL', key)
  end
  local clock = redis.call('TIME')
  redis.call('HSET', key, 'st', doc.st, 'ci', args[12], 'tn', args[4], 'tt', args[5], 'ta', args[10], 'u', int(units),
    'bal', int(balance), 'rv', table.concat(reserved, ','), 'p', args[6], 'meta', args[7], 'ts', clock[1],
    'tu', clock[2], 'tb', beginning and args[10] or '')
  return reply(ok, doc)
end

-- Ends a begun call at end_ms (capped at its granted units) and charges it. `expire` is the agent's own
-- end for a call whose end never came, or the release of a reservation that never began.
local function finish_call(key, doc, meta, deadlines, outbox, retention, end_ms, now, expiring, expired_retention)
  if doc.st == 'begun' then
    local limit = doc.tb + doc.u * 1000
    if expiring or end_ms > limit then
      end_ms = math.max(limit, doc.tb)
    end
    local duration = duration_of(doc.tb, end_ms)
    if duration > doc.u then
      duration = doc.u
    end
    release(doc, true)
    charge(doc, duration, outbox, now, doc.tb)
    doc.st = 'ended'
    doc.te = end_ms
    doc.d = duration
    if expiring then
      doc.auto = 1
    end
  elseif doc.st == 'authorized' then
    release(doc)
    doc.st = expiring and 'expired' or 'cancelled'
    if expiring then
      retention = expired_retention or retention  -- long enough to match the end of a call whose begin was lost
    end
  else
    return false
  end
  redis.call('ZREM', deadlines, key)
  save(key, doc, outbox, retention, meta)
  return doc.st == 'ended'
end

-- An end for a call whose begin never reached the agent (lost, failed, or the end came first): the call was
-- answered, so it is charged from the begin the end carries, or from its authorization, capped at its
-- granted units, also once its authorization has expired. A lost begin never makes a call free.
local function finish_unbegun(key, doc, meta, deadlines, outbox, retention, end_ms, begin_ms, now)
  begin_ms = begin_ms or doc.ta or end_ms
  if doc.st == 'authorized' then
    rebudget(doc, begin_ms)  -- answered where the reservation may not pay the units: charged as far as paid
    release(doc, true)
    redis.call('ZREM', deadlines, key)
  end
  local duration = duration_of(begin_ms, end_ms)
  if duration > doc.u then
    duration = doc.u
  end
  charge(doc, duration, outbox, now, begin_ms)
  doc.st = 'ended'
  doc.tb = begin_ms
  doc.te = math.max(end_ms, begin_ms)
  doc.d = duration
  doc.lb = 1  -- the begin was never seen
  save(key, doc, outbox, retention, meta)
  return true
end

-- Every state that changes something here: its parties' keys must be declared.
local CHARGEABLE = {authorized = true, begun = true, expired = true}

-- KEYS call, deadlines, outbox, catalog, stats, the parties' keys; ARGV now_ms, end_ms, retention_s, begin_ms
--      ('' when the end carries none)
local function finish(keys, args)
  STATS, COUNTED = keys[5], {}
  local doc, meta = load(keys[1])
  if not doc then
    return {0, 'missing', '', '', 0, 0}
  end
  if doc.st == 'ended' then
    return reply(true, doc)
  end
  if CHARGEABLE[doc.st] then
    local missing = undeclared(keys, 6, wanted(parties_of(doc), {}, false))
    if missing then
      return missing
    end
  end
  local ok
  if doc.st == 'authorized' or doc.st == 'expired' then
    ok = finish_unbegun(keys[1], doc, meta, keys[2], keys[3], tonumber(args[3]), tonumber(args[2]),
      tonumber(args[4] or ''), tonumber(args[1]))
  else
    ok = finish_call(keys[1], doc, meta, keys[2], keys[3], tonumber(args[3]), tonumber(args[2]),
      tonumber(args[1]), false)
  end
  return reply(ok, doc)
end

-- KEYS call, deadlines, outbox, catalog, stats, the parties' keys; ARGV now_ms, retention_s
local function rollback(keys, args)
  local key, deadlines, outbox = keys[1], keys[2], keys[3]
  STATS, COUNTED = keys[5], {}
  local doc, meta = load(key)
  if not doc then
    return {0, 'missing', '', '', 0, 0}
  end
  if doc.st == 'rolledback' then
    return reply(true, doc)
  end
  if doc.st == 'authorized' or doc.st == 'begun' or doc.st == 'recorded' then
    local missing = undeclared(keys, 6, wanted(parties_of(doc), {}, false))
    if missing then
      return missing
    end
  end
  if doc.st == 'authorized' or doc.st == 'begun' then
    release(doc)
  elseif doc.st == 'recorded' then
    for _, party in ipairs(parties_of(doc)) do
      if num(party.f) ~= 0 then
        local balance = redis.call('HINCRBY', party.k, 'balance', party.f)
        ledger(doc, party, 'refund', party.f, balance, tonumber(args[1]))
        count('refunded', party.f)
      end
    end
    doc.removed = 1
  else
    return reply(false, doc)
  end
  doc.st = 'rolledback'
  redis.call('ZREM', deadlines, key)
  save(key, doc, outbox, tonumber(args[2]), meta)
  return reply(true, doc)
end

-- A one-shot call record, priced from its own begin and end and charged at once. Also the end of a call
-- whose open state Redis lost (mode 'ended': Redis came back empty, PostgreSQL holds no final state of it):
-- charged from the begin its end carries, capped at `cap_s` seconds, as an ended call.
-- KEYS call, deadlines, outbox, catalog, stats, the parties' keys (and those of a call authorized under the tag);
-- ARGV now_ms, retention_s, tenant, transaction_tag, parties_json,
--      meta_json, auth_ms ('' if none), begin_ms, end_ms, catalog version planned on, call identity (a
--      call authorized under the tag keeps its own: the record is that call's), mode ('' or 'ended'),
--      cap_s (mode 'ended')
local function record(keys, args)
  local key, deadlines, outbox = keys[1], keys[2], keys[3]
  STATS, COUNTED = keys[5], {}
  local version = tonumber(args[10])
  local outdated = stale(keys[4], version)
  if outdated then
    return outdated
  end
  local parties = cjson.decode(args[5])
  local doc = load(key)
  local needed = wanted(parties, {}, false)
  if doc and doc.st == 'authorized' then
    wanted(parties_of(doc), needed, false)
  end
  local missing = undeclared(keys, 6, needed)
  if missing then
    return missing
  end
  for index, party in ipairs(parties) do
    local held = redis.call('HMGET', party.k, 'balance', 'cv')
    if held[2] and tonumber(held[2]) > version then
      return {0, 'stale', '', '', 0, tonumber(held[2])}
    end
    if not held[1] then
      return unseeded(parties, index)
    end
  end
  local identity, lost = args[11], args[12] == 'ended'
  if doc and lost then  -- the call is known again (a concurrent end got here first): answered as it is
    return reply(doc.st == 'ended', doc)
  end
  if doc then
    if doc.st == 'recorded' then
      return reply(true, doc)
    end
    if doc.st == 'begun' or doc.st == 'ended' then
      return reply(false, doc)
    end
    if doc.st == 'authorized' then
      release(doc)
      redis.call('ZREM', deadlines, key)
      identity = doc.ci
    end
  end
  local begin_ms, end_ms = tonumber(args[8]), tonumber(args[9])
  local duration = duration_of(begin_ms, end_ms)
  doc = {st = 'recorded', ci = identity, tn = args[3], tt = args[4], ck = key, u = 0, rs = '', rt = '', bal = 0, p = parties,
         tb = begin_ms, te = end_ms, d = duration, rec = 1}
  if lost then
    local cap = tonumber(args[13])
    if duration > cap then
      duration, doc.te = cap, begin_ms + cap * 1000
    end
    doc.st, doc.d, doc.rec, doc.lost = 'ended', duration, nil, 1
  end
  if args[7] ~= '' then
    doc.ta = tonumber(args[7])
  end
  for _, party in ipairs(parties) do
    party.rv = 0
  end
  charge(doc, duration, outbox, tonumber(args[1]), begin_ms)
  save(key, doc, outbox, tonumber(args[2]), args[6])
  return reply(true, doc)
end

-- Expires an unbegun reservation or ends an overdue call whose deadline has passed: one call per FCALL, its
-- parties' keys declared (the housekeeper lists the group's due calls with ZRANGEBYSCORE, sends each call's
-- key alone, and again with the keys the `keys` answer names). Answers as the call functions do; `waiting`
-- for a call not due (any more), `gone` for a deadline without an open call (removed).
-- KEYS deadlines, outbox, stats, broken (one group's), the call, its parties' keys; ARGV now_ms,
--      retention_s, expired_retention_s (how long an expired authorization is kept to match a late end:
--      longer than the longest call)
local function expire(keys, args)
  local deadlines, outbox, key = keys[1], keys[2], keys[5]
  STATS, BROKEN, COUNTED = keys[3], keys[4], {}
  local now = tonumber(args[1])
  local due = redis.call('ZSCORE', deadlines, key)
  if not due or tonumber(due) > now then
    return {0, 'waiting', '', '', 0, 0}
  end
  local ok, doc, meta = pcall(load, key)
  if not (ok and doc and (doc.st == 'authorized' or doc.st == 'begun')) then
    redis.call('ZREM', deadlines, key)
    return {0, 'gone', '', '', 0, 0}
  end
  local missing = undeclared(keys, 6, wanted(parties_of(doc), {}, false))
  if missing then
    return missing
  end
  local finished, err = pcall(finish_call, key, doc, meta, deadlines, outbox, tonumber(args[2]), now, now, true,
    tonumber(args[3]))
  if not finished then
    -- never retry a call that cannot be finished every second forever (what it wrote before failing
    -- would be written again): it is set aside for an operator, counted (rating_calls_broken) and logged
    redis.log(redis.LOG_WARNING, 'rating: cannot expire ' .. key .. ': ' .. tostring(err))
    redis.call('ZREM', deadlines, key)
    redis.call('SADD', BROKEN, key)
    return {0, 'broken', '', '', 0, 0}
  end
  return reply(true, doc)
end

-- Sets or moves a balance and writes the move to the ledger.
-- KEYS account, outbox; ARGV tenant, account_tag, mode ('set' or 'add'), amount, now_ms, reference
local function balance(keys, args)
  local key, outbox = keys[1], keys[2]
  local amount = tonumber(args[4])
  local new, delta
  if args[3] == 'set' then
    local old = num(redis.call('HGET', key, 'balance'))
    redis.call('HSET', key, 'balance', args[4])
    new = amount
    delta = amount - old
  else
    new = redis.call('HINCRBY', key, 'balance', args[4])
    delta = amount
  end
  redis.call('XADD', outbox, '*', 'e', 'ledger', 'tn', args[1], 'a', args[2], 'k', args[3] == 'set' and 'set' or 'adjust',
    'amt', int(delta), 'bal', int(new), 'tt', args[6], 'at', args[5])
  return new
end

-- Gives an account Redis holds no live balance for the balance it has: what PostgreSQL holds (the writer
-- keeps accounts.balance in step with the ledger up to its entry `after`), or, when the outbox still holds
-- later moves of the account that PostgreSQL has not applied, the balance after the newest of them.
-- KEYS account, outbox; ARGV tenant, account_tag, balance (PostgreSQL's), after (stream id of the last
--      move PostgreSQL applied, '0-0' if none). Returns the live balance.
local function seed(keys, args)
  local live = redis.call('HGET', keys[1], 'balance')
  if live then
    return tonumber(live)
  end
  local balance, upper, found = args[3], '+', false
  while not found do  -- newest first, down to what PostgreSQL applied
    local batch = redis.call('XREVRANGE', keys[2], upper, '(' .. args[4], 'COUNT', 1000)
    if #batch == 0 then
      break
    end
    for _, entry in ipairs(batch) do
      local fields = {}
      for index = 1, #entry[2], 2 do
        fields[entry[2][index]] = entry[2][index + 1]
      end
      if fields.e == 'ledger' and fields.tn == args[1] and fields.a == args[2] then
        balance, found = fields.bal, true
      elseif fields.mv and fields.tn == args[1] then  -- a call's moves (see ledger), the newest last
        local moves = cjson.decode(fields.mv)
        for index = #moves, 1, -1 do
          if moves[index][1] == args[2] then
            balance, found = int(moves[index][4]), true
            break
          end
        end
      end
      if found then
        break
      end
    end
    upper = '(' .. batch[#batch][1]
  end
  redis.call('HSET', keys[1], 'balance', balance)
  return tonumber(balance)
end

-- The walks alone, for the tests that hold them to the kernel's on many schedules quickly (the decisions
-- themselves are tested through rating_authorize and rating_finish).
-- ARGV the schedule's numbers (7, 9 with decimal prices), then duration, available,
--      share_pct, cap; or a timeline as JSON, then duration, available, share_pct, cap, answer (ms)
local function price(keys, args)
  if string.sub(args[1], 1, 1) == '[' then
    local line, start = cjson.decode(args[1]), tonumber(args[6])
    return {fee(line, tonumber(args[2]), start),
            max_units(line, share_of(tonumber(args[3]), tonumber(args[4])), tonumber(args[5]), start)}
  end
  local tariff = {}
  for index = 1, #args - 4 do
    tariff[index] = tonumber(args[index])
  end
  local n = #args
  return {fee(tariff, tonumber(args[n - 3])),
          max_units(tariff, share_of(tonumber(args[n - 2]), tonumber(args[n - 1])), tonumber(args[n]))}
end

-- KEYS catalog[, account...]; ARGV version: publishes a committed catalog change (never moves back).
-- With accounts (a change of those accounts alone), in each account's `cv` instead of the catalog key,
-- so that only their calls are planned again; returns the catalog key's version.
local function publish(keys, args)
  local version = tonumber(args[1])
  if #keys > 1 then
    for index = 2, #keys do
      if version > tonumber(redis.call('HGET', keys[index], 'cv') or '0') then
        redis.call('HSET', keys[index], 'cv', args[1])
      end
    end
  elseif version > tonumber(redis.call('GET', keys[1]) or '0') then
    redis.call('SET', keys[1], args[1])
  end
  return tonumber(redis.call('GET', keys[1]) or '0')
end

redis.register_function('rating_authorize', authorize)
redis.register_function('rating_publish', publish)
redis.register_function('rating_finish', finish)
redis.register_function('rating_rollback', rollback)
redis.register_function('rating_record', record)
redis.register_function('rating_expire', expire)
redis.register_function('rating_balance', balance)
redis.register_function('rating_seed', seed)
redis.register_function{function_name = 'rating_price', callback = price, flags = {'no-writes'}}

--[[ Rerating (agent/store/rerate.py; this block is the rerate's, kept apart from the functions above)
One adjustment of a rerate, made once: its marker in the rerate's hash, the balance move with its ledger
entry (balance above), and the call's final state in Redis given the record's new fee. A function rather
than WATCH/MULTI so it runs alike on one server and on a cluster (all four keys are in the tenant's group).
The agent read the call's doc and meta and computed the new ones; they are written only if the call still
holds what it read (compare-and-set, as WATCH did), else nothing is done and the agent reads again.
KEYS markers, call, account, outbox; ARGV marker, doc read, meta read ('' for none), new doc, new meta
('' to leave the call as it is), then balance's ARGV: tenant, account_tag, amount to add (0: no move, for a
call whose rollback gave back its whole first fee), now_ms, reference.
Returns 1 (made), 0 (its marker says it was made already) or -1 (the call changed since it was read).
]]
local function rerate_move(keys, args)
  if redis.call('HEXISTS', keys[1], args[1]) == 1 then
    return 0
  end
  local now = redis.call('HMGET', keys[2], 'doc', 'meta')
  if (now[1] or '') ~= args[2] or (now[2] or '') ~= args[3] then
    return -1
  end
  redis.call('HSET', keys[1], args[1], 1)
  if tonumber(args[8]) ~= 0 then
    balance({keys[3], keys[4]}, {args[6], args[7], 'add', args[8], args[9], args[10]})
  end
  if args[4] ~= '' then
    redis.call('HSET', keys[2], 'doc', args[4], 'meta', args[5])
  end
  return 1
end

redis.register_function('rating_rerate_move', rerate_move)
