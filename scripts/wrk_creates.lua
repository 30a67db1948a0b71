-- wrk script: POST creates, each with a name of its own, over four users.
--   wrk -t1 -c8 -d8s -s scripts/wrk_creates.lua http://127.0.0.1:PORT/ -- PREFIX
-- PREFIX keeps names apart between wrk processes run side by side.
local counter = 0
local prefix = "w"
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  prefix = (args[1] or "w") .. "-" .. tostring(thread_number)
end

function request()
  counter = counter + 1
  local user = "rate" .. (counter % 4) .. "@example.com"
  local body = '{"name":"' .. prefix .. "-" .. counter .. '"}'
  return wrk.format("POST", "/v1/organizations/users/" .. user .. "/api-keys",
    {["Authorization"] = "Bearer sk_bench_0123456789abcdefghijklmnop", ["Content-Type"] = "application/json"}, body)
end
