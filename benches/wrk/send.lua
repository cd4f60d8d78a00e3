-- wrk script: POST /email with a ~1 KiB JSON body whose From is a domain the
-- key may write; the key is drawn at random from the exported population's
-- read_write keys.
--
--   KEYS_FILE=keys.txt wrk -t2 -c64 -d15s --latency -s send.lua http://127.0.0.1:8080/

-- common.lua sits beside this script.
local common = dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "") .. "common.lua")

local keys
local headers = { ["Content-Type"] = "application/json" }
local TEXT = string.rep("Hello from the scopegate load test. ", 24) -- 864 bytes

setup = common.setup

-- Lines end in " rw" or " r": only read_write keys may send.
local function read_write(data, _, line_end)
   return string.byte(data, line_end - 1) == 119 -- "w"
end

function init(args)
   keys = common.load_keys(read_write)
   common.seed()
end

function request()
   local secret, domain = common.pick(keys)
   headers["Authorization"] = "Bearer " .. secret
   local body = '{"From":"Load Test <sender@' .. domain .. '>",'
      .. '"To":"someone@elsewhere.example","Subject":"scopegate load test",'
      .. '"TextBody":"' .. TEXT .. '"}'
   return wrk.format("POST", "/email", headers, body)
end
