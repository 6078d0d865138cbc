-- wrk script of bench/profile_read.py: random request bodies, and a check of every response.
--
--   wrk -t1 -c16 -d15s --latency -s bench/load.lua URL -- METHOD BODIES EXPECT
--
-- METHOD  GET or POST.
-- BODIES  a file with one request body per line, one picked at random per request; "-" for none.
-- EXPECT  a string every good response body contains.
--
-- done() prints one line, "PROFILE_READ_RESULT {json}", with the totals, latency percentiles (µs)
-- and how many responses were bad (not 200, or without EXPECT) or carried GraphQL "errors".

local threads = {}
local method, expect
local bodies = {}

-- Globals, so that done() can read them from each thread with thread:get().
checked = 0
bad = 0
graphql_errors = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  method, expect = args[1], args[3]
  if args[2] ~= "-" then
    for line in io.lines(args[2]) do
      bodies[#bodies + 1] = line
    end
  end
  math.randomseed(20240601)
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  if #bodies == 0 then
    return wrk.format(method)
  end
  return wrk.format(method, nil, nil, bodies[math.random(#bodies)])
end

function response(status, headers, body)
  checked = checked + 1
  if status ~= 200 or not string.find(body, expect, 1, true) then
    bad = bad + 1
  end
  if string.find(body, '"errors"', 1, true) then
    graphql_errors = graphql_errors + 1
  end
end

function done(summary, latency, requests)
  local total_checked, total_bad, total_errors = 0, 0, 0
  for _, thread in ipairs(threads) do
    total_checked = total_checked + thread:get("checked")
    total_bad = total_bad + thread:get("bad")
    total_errors = total_errors + thread:get("graphql_errors")
  end
  local e = summary.errors
  io.write(string.format(
    'PROFILE_READ_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,'
      .. '"checked":%d,"bad":%d,"graphql_errors":%d,"non_2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    total_checked, total_bad, total_errors, e.status, e.connect + e.read + e.write + e.timeout
  ))
end
