# DataFusion's sketches, over the store's tables.

query approximate distinct counts are exact at this size
SELECT approx_distinct(device_id) AS devices, approx_distinct(CAST(temp AS BIGINT)) AS temps FROM climate
----
devices | temps
3 | 11

query approximate median per device (a t-digest estimate: b's exact median is 25)
SELECT device_id, approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY temp) AS p50, median(temp) AS exact
FROM climate WHERE device_id = 'b' GROUP BY 1
----
device_id | p50 | exact
b | 24.5 | 25

query percentile 0 and 1 are the minimum and maximum
SELECT approx_percentile_cont(0.0) WITHIN GROUP (ORDER BY temp) AS p0, approx_percentile_cont(1.0) WITHIN GROUP (ORDER BY temp) AS p100 FROM climate
----
p0 | p100
5 | 30

query sketches per day in Berlin
SELECT time_bucket(INTERVAL '1 day', time, 'Europe/Berlin') AS day, approx_distinct(device_id) AS devices
FROM climate GROUP BY 1 ORDER BY 1
----
day | devices
2024-03-29T23:00:00Z | 1
2024-03-30T23:00:00Z | 3
2024-03-31T22:00:00Z | 1
