-- Activity sessions per device (gap 30 s), with late data accepted for a minute.
SELECT device_id() AS device, count(*) AS events, sum(kwh) AS energy,
       window_start() / 1000000000 AS from_s, window_end() / 1000000000 AS to_s
FROM 'devices/+/telemetry'
GROUP BY device_id(), SESSION('30s')
