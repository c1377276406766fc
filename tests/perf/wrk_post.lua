-- wrk script: a 2 KB license POST per request, cycling through the paths in WRK_PATHS_FILE,
-- with the headers a player sends; done() prints one JSON line (marker WRK_JSON) for bench.py.
--   WRK_PATHS_FILE   one request path per line
--   WRK_BODY_KIND    "fairplay" (a binary SPC: 00 00 00 01 ...) or anything else (opaque bytes)
--   WRK_BODY_BYTES   body size (default 2048)
--   WRK_TOKEN        player JWT sent as "Authorization: Bearer ..." (optional)

local requests_by_index = {}
local next_index = 0

local function body()
  local size = tonumber(os.getenv("WRK_BODY_BYTES") or "2048")
  if os.getenv("WRK_BODY_KIND") == "fairplay" then
    return "\0\0\0\1" .. string.rep("s", size - 4)
  end
  return string.rep("c", size)
end

function init(args)
  wrk.method = "POST"
  wrk.body = body()
  wrk.headers["Content-Type"] = "application/octet-stream"
  wrk.headers["X-Client-Platform"] = "android"
  wrk.headers["X-App-Version"] = "6.4.1"
  local token = os.getenv("WRK_TOKEN")
  if token and token ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. token
  end
  for path in io.lines(os.getenv("WRK_PATHS_FILE")) do
    if path ~= "" then
      table.insert(requests_by_index, wrk.format(nil, path))
    end
  end
end

function request()
  next_index = next_index % #requests_by_index + 1
  return requests_by_index[next_index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
