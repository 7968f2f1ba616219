-- wrk script: POST /v1/authorization with a unique transaction_tag per request, rotating accounts and
-- destinations read from files.
--
--   wrk -t1 -c32 -d15s -s loadtest/wrk/authorization.lua http://127.0.0.1:PORT \
--       -- ACCOUNTS_FILE DESTINATIONS_FILE [RUN_ID]
--
-- ACCOUNTS_FILE and DESTINATIONS_FILE hold one account tag / SIP URI a line (loadtest/generate.py writes
-- them). RUN_ID (default: the start time) keeps the tags of one run apart from those of another against
-- the same Redis, so no request is answered from the state of an earlier call with the same tag.
-- At the end one line `WRK_JSON {...}` sums the run up for loadtest/bench_auth.py (latencies in us).
-- With RATING_WRK_PACE_MS set, each connection waits that many ms before each request (a paced load, for the
-- latency at a given rate: about connections * 1000 / pace requests/s while answers are much quicker).

local accounts, destinations = {}, {}
local run_id = tostring(os.time())
local threads = {}
local counter = 0
thread_id = 1  -- a global: setup() sets it per thread with thread:set

local function read_lines(path)
  local lines = {}
  local handle = assert(io.open(path, "r"), "cannot open " .. tostring(path))
  for line in handle:lines() do
    if line ~= "" then
      lines[#lines + 1] = line
    end
  end
  handle:close()
  assert(#lines > 0, path .. " is empty")
  return lines
end

-- runs once per thread, in the thread's own Lua state
function setup(thread)
  thread:set("thread_id", #threads + 1)
  threads[#threads + 1] = thread
end

function init(args)
  accounts = read_lines(args[1] or "accounts.txt")
  destinations = read_lines(args[2] or "destinations.txt")
  if args[3] then
    run_id = args[3]
  end
  math.randomseed(thread_id * 7919 + #run_id)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

local pace = tonumber(os.getenv("RATING_WRK_PACE_MS") or "")
if pace then
  function delay()
    return pace
  end
end

function request()
  counter = counter + 1
  local account = accounts[math.random(#accounts)]
  local body = '{"transaction_tag":"' .. run_id .. "-" .. thread_id .. "-" .. counter ..
    '","account_tag":"' .. account ..
    '","source":"sip:' .. account .. '@127.0.0.1","destination":"' ..
    destinations[math.random(#destinations)] .. '"}'
  return wrk.format(nil, "/v1/authorization", nil, body)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f,"errors_connect":%d,"errors_read":%d,"errors_write":%d,' ..
    '"errors_status":%d,"errors_timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout))
end
