-- wrk script: POST /api/coupons/redeem with a fresh orderId per request, so every request
-- takes a use (journal append + fdatasync, group-committed). The coupon must exist and be
-- unlimited; create it once with:
--   psql "$DATABASE_URL" -c "INSERT INTO coupons (code, type, discount_type, discount_value)
--     VALUES ('LOADGEN-REDEEM', 'time_specific', 'percentage', 10) ON CONFLICT (code) DO NOTHING"
-- then: API_TOKEN=$(cat data/api_token) wrk -t2 -c100 -d10s --latency -s tools/wrk/redeem.lua http://127.0.0.1:8080
-- (the token is sent when API_TOKEN is set: redeem is the shop's backend's)
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_no", #threads)
end

function init(args)
  code = os.getenv("REDEEM_CODE") or "LOADGEN-REDEEM"
  headers = { ["Content-Type"] = "application/json" }
  local token = os.getenv("API_TOKEN")
  if token and token ~= "" then
    headers["Authorization"] = "Bearer " .. token
  end
  prefix = string.format("wrk-%d-%d-%d", os.time(), thread_no, math.random(1, 1e9))
  counter = 0
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"code":"%s","userId":"user_%07d","orderValue":100,"orderId":"%s-%d"}',
    code, counter % 1000000, prefix, counter)
  return wrk.format("POST", "/api/coupons/redeem", headers, body)
end
