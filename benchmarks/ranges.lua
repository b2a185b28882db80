-- wrk script: GET random byte ranges of one object.
-- wrk ... -s ranges.lua URL -- OBJECT_SIZE [SPAN=65536] [SEED=1]
-- done() prints one line: BENCH {json}, read by run.py, which checks the answers from wrk's
-- totals (bytes read, status errors). No response() hook: with one, wrk hands every answer's
-- head and body to Lua, which took a whole core at nginx's rate and capped it there.

function init(args)
  size = tonumber(args[1])
  span = tonumber(args[2] or 65536)
  math.randomseed(tonumber(args[3] or 1))
end

function request()
  local first = math.random(0, size - span)
  local range = string.format("bytes=%d-%d", first, first + span - 1)
  return wrk.format("GET", nil, { ["Range"] = range })
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %.0f, "p99_us": %.0f, ' ..
    '"bytes": %d, "status_errors": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.bytes, e.status, e.connect + e.read + e.write + e.timeout))
end
