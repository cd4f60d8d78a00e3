-- wrk script: keys the gateway must refuse, never touching the upstream.
-- Half are malformed issued-format keys (`sg_` + 38 random base62
-- characters: the checksum fails, so they are refused before any hashing),
-- half are unknown keys of another format (hashed, looked up, not found).
--
--   wrk -t2 -c64 -d15s --latency -s invalid_key.lua http://127.0.0.1:8080/

-- common.lua sits beside this script.
local common = dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "") .. "common.lua")

local DOMAINS = {
   "example.com", "staging.example.com", "client-a.com", "client-b.com",
   "mail.client-b.com", "news.example.com", "eu.example.com", "us.example.com",
}
local BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
local POOL = 20000
local keys, n = {}, 0
local headers = {}

setup = common.setup

local function random_chars(len)
   local t = {}
   for i = 1, len do
      local c = math.random(62)
      t[i] = BASE62:sub(c, c)
   end
   return table.concat(t)
end

function init(args)
   common.seed()
   for i = 1, POOL do
      n = n + 1
      keys[n] = "sg_" .. random_chars(38)
      n = n + 1
      keys[n] = "ext_" .. random_chars(36)
   end
end

function request()
   headers["Authorization"] = "Bearer " .. keys[math.random(n)]
   return wrk.format("GET", "/domains/" .. DOMAINS[math.random(#DOMAINS)], headers)
end
