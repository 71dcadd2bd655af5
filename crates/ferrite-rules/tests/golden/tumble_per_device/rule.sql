-- Per-device 10 s statistics; readings carry their own event time ("event").
SELECT device_id() AS device,
       window_start() / 1000000000 AS start_s,
       count(*) AS n,
       avg(temp) AS mean,
       min(temp) AS lo,
       max(temp) AS hi,
       last(temp) AS latest
FROM 'devices/+/telemetry'
WHERE temp IS NOT NULL
GROUP BY device_id(), TUMBLE(INTERVAL '10' SECOND)
HAVING count(*) >= 2
