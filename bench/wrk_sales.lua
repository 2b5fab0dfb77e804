-- Sales through syncd's POS API from wrk: each request a new sale (its own Idempotency-Key),
-- the invoice bodies taken in turn from the file named by the first script argument (one
-- JSON body a line), the keys prefixed by the second. wrk's threads each keep the answers'
-- statuses, per printer the highest counter answered, and how many distinct documents the
-- 201 answers named (as many as there were 201s, unless one document was given twice);
-- done() prints them with wrk's own figures as one JSON line on stderr (wrk's report goes
-- to stdout).

local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  bodies = {}
  for line in io.lines(args[1]) do
    if #line > 0 then
      table.insert(bodies, line)
    end
  end
  prefix = args[2] .. "-" .. id .. "-"
  sent = 0
  statuses = {}
  highest = {}
  seen = {}
  distinct = 0
end

function request()
  sent = sent + 1
  local body = bodies[(sent - 1) % #bodies + 1]
  local headers = {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. sent,
  }
  return wrk.format("POST", "/v1/invoices", headers, body)
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status == 201 then
    local device = string.match(body, '"device_id":%s*"([^"]+)"')
    local counter = tonumber(string.match(body, '"counter":%s*(%d+)'))
    if device and counter then
      if counter > (highest[device] or 0) then
        highest[device] = counter
      end
      local document = device .. ":" .. counter
      if not seen[document] then
        seen[document] = true
        distinct = distinct + 1
      end
    end
  end
end

local function json_object(t)
  local parts = {}
  for k, v in pairs(t) do
    table.insert(parts, string.format('"%s": %d', k, v))
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local statuses_all, highest_all, distinct_all = {}, {}, 0
  for _, thread in ipairs(threads) do
    distinct_all = distinct_all + thread:get("distinct")
    for k, v in pairs(thread:get("statuses")) do
      statuses_all[k] = (statuses_all[k] or 0) + v
    end
    for k, v in pairs(thread:get("highest")) do
      if v > (highest_all[k] or 0) then
        highest_all[k] = v
      end
    end
  end
  io.stderr:write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "max_us": %d, "statuses": %s, "highest": %s, '
      .. '"distinct_documents": %d}\n',
    summary.requests,
    summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout,
    latency:percentile(50),
    latency:percentile(90),
    latency:percentile(99),
    latency.max,
    json_object(statuses_all),
    json_object(highest_all),
    distinct_all
  ))
end
