-- Shared by the wrk scripts in this folder (loaded with dofile, see the top of
-- each): thread numbering, seeding, and the exported key file.
--
-- KEYS_FILE comes from `scopegate loadtest --populate-only --export-secrets FILE`:
-- one key per line, `SECRET DOMAIN rw|r`. Every thread loads the whole file
-- in init(), before wrk starts its clock. It is kept as one string with an
-- index of where lines start: much faster than a million small strings, so
-- wrk's threads are ready at once.

local common = {}
local counter = 0

-- wrk's setup(): number the threads, so each seeds its own random sequence.
function common.setup(thread)
   thread:set("id", counter)
   counter = counter + 1
end

function common.seed()
   math.randomseed(os.time() * 7919 + (id or 0) * 104729)
end

-- Loads KEYS_FILE; keeps the lines for which keep(data, line_start, line_end)
-- is true (all lines without it).
function common.load_keys(keep)
   local path = os.getenv("KEYS_FILE") or "keys.txt"
   local f = assert(io.open(path, "rb"), "cannot open KEYS_FILE " .. path)
   local data = f:read("*a")
   f:close()
   local keys = { data = data, starts = {}, n = 0 }
   local find, pos, len = string.find, 1, #data
   while pos < len do
      local nl = find(data, "\n", pos, true) or (len + 1)
      if not keep or keep(data, pos, nl) then
         keys.n = keys.n + 1
         keys.starts[keys.n] = pos
      end
      pos = nl + 1
   end
   assert(keys.n > 0, "no usable keys in " .. path)
   return keys
end

-- A random key of the loaded ones: its secret and its domain.
function common.pick(keys)
   local data, s = keys.data, keys.starts[math.random(keys.n)]
   local sp = string.find(data, " ", s, true)
   local sp2 = string.find(data, " ", sp + 1, true)
   return data:sub(s, sp - 1), data:sub(sp + 1, sp2 - 1)
end

return common
