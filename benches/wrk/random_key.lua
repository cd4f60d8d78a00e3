-- wrk script: every request uses a key drawn at random from the exported
-- population, on GET /domains/{domain} where {domain} is a domain that key
-- covers.
--
--   KEYS_FILE=keys.txt wrk -t2 -c64 -d15s --latency -s random_key.lua http://127.0.0.1:8080/
--
-- KEYS_FILE comes from `scopegate loadtest --populate-only --export-secrets FILE`:
-- one key per line, `SECRET DOMAIN rw|r`. Every thread loads the whole file
-- in init(), before wrk starts its clock; indexing lines keeps that short.

local data, starts, n = nil, {}, 0
local headers = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
end

-- Keeps the file as one string and indexes where its lines start: much
-- faster than a million small strings, so wrk's threads are ready at once.
function init(args)
   local path = os.getenv("KEYS_FILE") or "keys.txt"
   local f = assert(io.open(path, "rb"), "cannot open KEYS_FILE " .. path)
   data = f:read("*a")
   f:close()
   local find, pos, len = string.find, 1, #data
   while pos < len do
      n = n + 1
      starts[n] = pos
      pos = (find(data, "\n", pos, true) or len) + 1
   end
   assert(n > 0, "no keys in " .. path)
   math.randomseed(os.time() * 7919 + (id or 0) * 104729)
end

function request()
   local s = starts[math.random(n)]
   local sp = string.find(data, " ", s, true)
   local sp2 = string.find(data, " ", sp + 1, true)
   headers["Authorization"] = "Bearer " .. data:sub(s, sp - 1)
   return wrk.format("GET", "/domains/" .. data:sub(sp + 1, sp2 - 1), headers)
end
