-- wrk script: POST /api/coupons/redeem with a fresh orderId per request, so every request
-- takes a use (journal append + fdatasync, group-committed). The coupon must exist and be
-- unlimited; create it once with:
--   psql "$DATABASE_URL" -c "INSERT INTO coupons (code, type, discount_type, discount_value)
--     VALUES ('LOADGEN-REDEEM', 'time_specific', 'percentage', 10) ON CONFLICT (code) DO NOTHING"
-- then: wrk -t2 -c100 -d10s --latency -s tools/wrk/redeem.lua http://127.0.0.1:8080
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_no", #threads)
end

function init(args)
  code = os.getenv("REDEEM_CODE") or "LOADGEN-REDEEM"
  prefix = string.format("wrk-%d-%d-%d", os.time(), thread_no, math.random(1, 1e9))
  counter = 0
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"code":"%s","userId":"user_%07d","orderValue":100,"orderId":"%s-%d"}',
    code, counter % 1000000, prefix, counter)
  return wrk.format("POST", "/api/coupons/redeem", { ["Content-Type"] = "application/json" }, body)
end
