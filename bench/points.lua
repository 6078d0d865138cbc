-- wrk script of bench/points.py: ledger postings under unique idempotency keys, every response checked.
--
--   wrk -t1 -c16 -d15s --latency -s bench/points.lua URL -- TEMPLATES MEMBERS PREFIX PENDING
--
-- TEMPLATES  a file with one JSON request body per line; request n of a thread uses line
--            (n - 1) % lines + 1, so two lines alternate (earn, redeem, earn, ...). In each body
--            @KEY@ becomes the request's idempotency key and @MEMBER@ a member id.
-- MEMBERS    a file with one member id per line; each request picks one at random.
-- PREFIX     keys are PREFIX-t<thread>-<n>: unique per request, per thread and per run.
-- PENDING    done() writes here, one per line, the keys sent whose response did not carry the
--            posting: requests still in flight when wrk stopped (they may have been posted) and
--            refused ones (InsufficientPoints consumes no key).
--
-- A good response is HTTP 200 with `"replayed":false` and the posting's idempotency key (its last
-- `:`-separated part is the key sent: recordOrder posts under `order:<channel>:<externalOrderId>`).
-- done() prints one line, "POINTS_RESULT {json}", with the totals, the latency percentiles (µs)
-- and the counts of postings, refusals (INSUFFICIENT_POINTS), bad responses and GraphQL errors.

local threads = {}
local templates = {}
local members = {}
local prefix

-- Globals, so that done() can read them from each thread with thread:get().
sent = 0
checked = 0
posted = 0
insufficient = 0
bad = 0
graphql_errors = 0
pending = {}
pending_path = nil

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local function lines(path)
  local out = {}
  for line in io.lines(path) do
    if line ~= "" then
      out[#out + 1] = line
    end
  end
  return out
end

function init(args)
  templates = lines(args[1])
  members = lines(args[2])
  prefix = args[3] .. "-t" .. tid .. "-"
  pending_path = args[4]
  math.randomseed(20240601 + tid)
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  sent = sent + 1
  local key = prefix .. sent
  pending[key] = true
  local template = templates[(sent - 1) % #templates + 1]
  local body = template:gsub("@KEY@", key):gsub("@MEMBER@", members[math.random(#members)])
  return wrk.format("POST", nil, nil, body)
end

function response(status, headers, body)
  checked = checked + 1
  if string.find(body, '"errors"', 1, true) then
    graphql_errors = graphql_errors + 1
  end
  local key = string.match(body, '"idempotencyKey":"([^"]*)"')
  if status == 200 and key and string.find(body, '"replayed":false', 1, true) then
    pending[string.match(key, "([^:]*)$")] = nil
    posted = posted + 1
  elseif status == 200 and string.find(body, '"code":"INSUFFICIENT_POINTS"', 1, true) then
    insufficient = insufficient + 1
  else
    bad = bad + 1
    if bad <= 3 then
      io.stderr:write("bad response (HTTP " .. status .. "): " .. string.sub(body, 1, 500) .. "\n")
    end
  end
end

function done(summary, latency, requests)
  local totals = { sent = 0, checked = 0, posted = 0, insufficient = 0, bad = 0, graphql_errors = 0 }
  local out = assert(io.open(threads[1]:get("pending_path"), "w"))
  for _, thread in ipairs(threads) do
    for name, value in pairs(totals) do
      totals[name] = value + thread:get(name)
    end
    for key in pairs(thread:get("pending")) do
      out:write(key, "\n")
    end
  end
  out:close()
  local e = summary.errors
  io.write(string.format(
    'POINTS_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"sent":%d,'
      .. '"checked":%d,"posted":%d,"insufficient":%d,"bad":%d,"graphql_errors":%d,"non_2xx":%d,'
      .. '"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    totals.sent, totals.checked, totals.posted, totals.insufficient, totals.bad, totals.graphql_errors,
    e.status, e.connect + e.read + e.write + e.timeout
  ))
end
