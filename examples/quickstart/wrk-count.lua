-- wrk script: counts responses by the X-Version header they carry and the ones that are not 2xx,
-- across all of wrk's threads, and prints the tally. WRK_METHOD=POST sends a small body instead.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  served = {}
  failed = 0
  if os.getenv("WRK_METHOD") == "POST" then
    wrk.method = "POST"
    wrk.body = string.rep("x", 512)
    wrk.headers["Content-Type"] = "application/octet-stream"
  end
end

function response(status, headers, body)
  local version = headers["x-version"] or headers["X-Version"] or "(none)"
  served[version] = (served[version] or 0) + 1
  if status < 200 or status > 299 then
    failed = failed + 1
  end
end

function done(summary, latency, requests)
  local total = {}
  local non2xx = 0
  for _, t in ipairs(threads) do
    for version, n in pairs(t:get("served")) do
      total[version] = (total[version] or 0) + n
    end
    non2xx = non2xx + t:get("failed")
  end
  local e = summary.errors
  local socket_errors = e.connect + e.read + e.write + e.timeout
  io.write(string.format("requests: %d\n", summary.requests))
  for version, n in pairs(total) do
    io.write(string.format("served by version %s: %d\n", version, n))
  end
  io.write(string.format("non-2xx: %d\n", non2xx))
  io.write(string.format("socket errors: %d (connect %d, read %d, write %d, timeout %d)\n",
    socket_errors, e.connect, e.read, e.write, e.timeout))
  io.write(string.format("failed: %d\n", non2xx + socket_errors))
end
