-- wrk script: GET random byte ranges of one object; count the answers that are not 206.
-- wrk ... -s ranges.lua URL -- OBJECT_SIZE [SPAN=65536] [SEED=1]
-- done() prints one line: BENCH {json}, read by run.py.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  size = tonumber(args[1])
  span = tonumber(args[2] or 65536)
  math.randomseed(tonumber(args[3] or 1))
  responses = 0
  non206 = 0
end

function request()
  local first = math.random(0, size - span)
  local range = string.format("bytes=%d-%d", first, first + span - 1)
  return wrk.format("GET", nil, { ["Range"] = range })
end

function response(status, headers, body)
  responses = responses + 1
  if status ~= 206 then
    non206 = non206 + 1
  end
end

function done(summary, latency, requests)
  local total_responses, total_non206 = 0, 0
  for _, thread in ipairs(threads) do
    total_responses = total_responses + thread:get("responses")
    total_non206 = total_non206 + thread:get("non206")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %.0f, "p99_us": %.0f, ' ..
    '"responses": %d, "non206": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    total_responses, total_non206, e.connect + e.read + e.write + e.timeout))
end
