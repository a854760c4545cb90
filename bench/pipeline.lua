-- wrk script: HTTP/1.1 pipelining.
--
-- Every write sends DEPTH requests back to back (default 16); wrk then counts
-- each of the DEPTH responses as one request. Usage:
--   wrk -t1 -c256 -d10s --latency -s bench/pipeline.lua http://127.0.0.1:18080/plaintext -- 16
--
-- Latency note: wrk times every response from the start of the write that
-- carried its batch, so with pipelining the latency is "batch latency".

local depth = 16
local batch = nil

function init(args)
   if args[1] ~= nil then
      depth = tonumber(args[1])
      if depth == nil or depth < 1 then
         error("pipeline.lua: depth must be a positive integer, got " .. tostring(args[1]))
      end
   end
   -- wrk.format(method, path, headers, body): nil method/path take the URL's.
   local reqs = {}
   for i = 1, depth do
      reqs[i] = wrk.format(nil, nil)
   end
   batch = table.concat(reqs)
end

function request()
   return batch
end
