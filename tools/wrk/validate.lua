-- wrk script: POST /api/coupons/validate with a fixed body (valid percentage coupon in the
-- reference data set seeded with the default --rng-seed). Usage:
--   wrk -t2 -c100 -d20s -s tools/wrk/validate.lua http://127.0.0.1:8080
wrk.method = "POST"
wrk.path = "/api/coupons/validate"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BODY") or '{"code":"TIME-00012-C7SG","userId":"user_0000001","orderValue":1000,"orderId":"ord-1"}'
