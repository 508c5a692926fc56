-- wrk script for the 16 KiB POST scenario: every request carries the same 16,384-byte body
-- (wrk adds Content-Length itself).
wrk.method = "POST"
wrk.body = string.rep("p", 16384)
wrk.headers["Content-Type"] = "application/octet-stream"
