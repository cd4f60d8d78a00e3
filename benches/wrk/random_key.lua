-- wrk script: every request uses a key drawn at random from the exported
-- population, on GET /domains/{domain} where {domain} is a domain that key
-- covers.
--
--   KEYS_FILE=keys.txt wrk -t2 -c64 -d15s --latency -s random_key.lua http://127.0.0.1:8080/
--
-- KEYS_FILE: see common.lua.

-- common.lua sits beside this script.
local common = dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "") .. "common.lua")

local keys
local headers = {}

setup = common.setup

function init(args)
   keys = common.load_keys()
   common.seed()
end

function request()
   local secret, domain = common.pick(keys)
   headers["Authorization"] = "Bearer " .. secret
   return wrk.format("GET", "/domains/" .. domain, headers)
end
