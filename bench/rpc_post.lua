-- wrk script: POST one JSON-RPC request, and count every reply that is not a 200 carrying the expected
-- result, so that a fast error path cannot pass for throughput.
-- Arguments (after wrk's `--`): token, request body, the expected result (a JSON number).
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. args[1]
  wrk.body = args[2]
  wanted = '"result":%s*' .. args[3] .. '%s*[,}]'
  good, bad = 0, 0
end

function response(status, headers, body)
  if status == 200 and string.find(body, wanted) then
    good = good + 1
  else
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local good_total, bad_total = 0, 0
  for _, thread in ipairs(threads) do
    good_total = good_total + thread:get("good")
    bad_total = bad_total + thread:get("bad")
  end
  local e = summary.errors
  io.write(string.format('WRK_RESULT {"requests": %d, "duration_us": %d, "good": %d, "bad": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, good_total, bad_total, e.connect + e.read + e.write + e.timeout))
end
