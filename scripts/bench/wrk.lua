-- wrk script for scripts/bench.sh. One file, three modes (environment variable BENCH_MODE):
--   hits    (default)  no request() function, so wrk sends its static request (no Lua per request)
--   create             POST creates with a unique name per request: {"name":"k-<thread>-<counter>"}
--   update             PATCH .../api-keys/missing-<thread>-<counter>: 404 upstream, audited as rejected
--   users              GET the list of user<i>@example.com, i cycling over 1..BENCH_USERS
--   unique             GET the list of nostore<thread><counter>@example.com: never the same list twice
-- Every mode prints one machine-readable line at the end:
--   BENCH requests=N duration_us=N p50_us=N p90_us=N p99_us=N p999_us=N mean_us=N
--         connect=N read=N write=N status=N timeout=N ok=N bad=N
-- (`status` is wrk's count of non-2xx/3xx answers; ok/bad are counted in create mode (2xx is ok)
-- and update mode (404 is ok).)

local mode = os.getenv("BENCH_MODE") or "hits"
local threads = {}
local next_id = 0

function setup(thread)
   next_id = next_id + 1
   thread:set("id", next_id)
   table.insert(threads, thread)
end

if mode == "create" or mode == "update" then
   -- create: POST a unique name (200). update: PATCH a key that does not exist: the upstream
   -- answers 404, the proxy still audits it (outcome `rejected`), and the fake upstream's work
   -- stays constant.
   local path = os.getenv("BENCH_PATH") or "/v1/organizations/users/bench@example.com/api-keys"
   counter = 0
   ok = 0
   bad = 0
   function init(args)
      wrk.headers["Content-Type"] = "application/json"
   end
   function request()
      counter = counter + 1
      if mode == "create" then
         return wrk.format("POST", path, nil, '{"name":"k-' .. id .. '-' .. counter .. '"}')
      end
      return wrk.format("PATCH", path .. "/missing-" .. id .. "-" .. counter, nil, '{"description":"bench"}')
   end
   function response(status, headers, body)
      local expected = (mode == "create" and status >= 200 and status < 300) or (mode == "update" and status == 404)
      if expected then ok = ok + 1 else bad = bad + 1 end
   end
elseif mode == "users" then
   local users = tonumber(os.getenv("BENCH_USERS") or "1000")
   counter = 0
   function request()
      counter = counter + 1
      -- the two threads start at different users so both touch entries not yet in memory
      local i = ((counter + id * 7919) % users) + 1
      return wrk.format("GET", "/v1/organizations/users/user" .. i .. "@example.com/api-keys")
   end
elseif mode == "unique" then
   -- a list no other request asks for: nostore<thread><counter>@example.com
   counter = 0
   function request()
      counter = counter + 1
      return wrk.format("GET", string.format("/v1/organizations/users/nostore%d%09d@example.com/api-keys", id, counter))
   end
end

function done(summary, latency, requests)
   local ok_total, bad_total = 0, 0
   for _, thread in ipairs(threads) do
      ok_total = ok_total + (thread:get("ok") or 0)
      bad_total = bad_total + (thread:get("bad") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d mean_us=%d " ..
      "connect=%d read=%d write=%d status=%d timeout=%d ok=%d bad=%d\n",
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
      latency.mean, e.connect, e.read, e.write, e.status, e.timeout, ok_total, bad_total))
end
