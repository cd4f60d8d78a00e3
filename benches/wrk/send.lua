-- wrk script: POST /email with a ~1 KiB JSON body whose From is a domain the
-- key may write; the key is drawn at random from the exported population's
-- read_write keys.
--
--   KEYS_FILE=keys.txt wrk -t2 -c64 -d15s --latency -s send.lua http://127.0.0.1:8080/

local data, starts, n = nil, {}, 0
local headers = { ["Content-Type"] = "application/json" }
local counter = 0
local TEXT = string.rep("Hello from the scopegate load test. ", 24) -- 864 bytes

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
end

-- Keeps the file as one string and indexes the lines of read_write keys.
function init(args)
   local path = os.getenv("KEYS_FILE") or "keys.txt"
   local f = assert(io.open(path, "rb"), "cannot open KEYS_FILE " .. path)
   data = f:read("*a")
   f:close()
   local find, byte, pos, len = string.find, string.byte, 1, #data
   while pos < len do
      local nl = find(data, "\n", pos, true) or (len + 1)
      -- lines end in " rw" or " r"
      if byte(data, nl - 1) == 119 then
         n = n + 1
         starts[n] = pos
      end
      pos = nl + 1
   end
   assert(n > 0, "no read_write keys in " .. path)
   math.randomseed(os.time() * 7919 + (id or 0) * 104729)
end

function request()
   local s = starts[math.random(n)]
   local sp = string.find(data, " ", s, true)
   local sp2 = string.find(data, " ", sp + 1, true)
   headers["Authorization"] = "Bearer " .. data:sub(s, sp - 1)
   local body = '{"From":"Load Test <sender@' .. data:sub(sp + 1, sp2 - 1) .. '>",'
      .. '"To":"someone@elsewhere.example","Subject":"scopegate load test",'
      .. '"TextBody":"' .. TEXT .. '"}'
   return wrk.format("POST", "/email", headers, body)
end
