# time_bucket_gapfill in GROUP BY adds a row for every missing bucket of every series;
# locf / interpolate (window functions) fill them per series.
# Hourly temperature, 2024-03-31 00:00-06:00Z: a has 00, 01 (the late correction: 12), 04, 05;
# b has 00 (late row at 00:30), 02 (two readings), 05; c has none in the range.

query every hour for every series, gaps as NULLs
SELECT time_bucket_gapfill(INTERVAL '1 hour', time, '2024-03-31T00:00:00Z', '2024-03-31T06:00:00Z') AS hour,
       device_id, count(*) AS n, avg(temp) AS temp
FROM climate WHERE time >= '2024-03-31T00:00:00Z' AND time < '2024-03-31T06:00:00Z'
GROUP BY 1, 2 ORDER BY 2, 1
----
hour | device_id | n | temp
2024-03-31T00:00:00Z | a | 1 | 10
2024-03-31T01:00:00Z | a | 1 | 12
2024-03-31T02:00:00Z | a | NULL | NULL
2024-03-31T03:00:00Z | a | NULL | NULL
2024-03-31T04:00:00Z | a | 1 | 18
2024-03-31T05:00:00Z | a | 1 | 20
2024-03-31T00:00:00Z | b | 1 | 20
2024-03-31T01:00:00Z | b | NULL | NULL
2024-03-31T02:00:00Z | b | 2 | 25
2024-03-31T03:00:00Z | b | NULL | NULL
2024-03-31T04:00:00Z | b | NULL | NULL
2024-03-31T05:00:00Z | b | 1 | 30

query previous value and linear interpolation, per device
SELECT hour, device_id, temp,
       locf(temp) OVER w AS prev,
       interpolate(temp, hour) OVER w AS line
FROM (
  SELECT time_bucket_gapfill(INTERVAL '1 hour', time, '2024-03-31T00:00:00Z', '2024-03-31T06:00:00Z') AS hour,
         device_id, avg(temp) AS temp
  FROM climate WHERE time >= '2024-03-31T00:00:00Z' AND time < '2024-03-31T06:00:00Z'
  GROUP BY 1, 2)
WINDOW w AS (PARTITION BY device_id ORDER BY hour)
ORDER BY device_id, hour
----
hour | device_id | temp | prev | line
2024-03-31T00:00:00Z | a | 10 | 10 | 10
2024-03-31T01:00:00Z | a | 12 | 12 | 12
2024-03-31T02:00:00Z | a | NULL | 12 | 14
2024-03-31T03:00:00Z | a | NULL | 12 | 16
2024-03-31T04:00:00Z | a | 18 | 18 | 18
2024-03-31T05:00:00Z | a | 20 | 20 | 20
2024-03-31T00:00:00Z | b | 20 | 20 | 20
2024-03-31T01:00:00Z | b | NULL | 20 | 22.5
2024-03-31T02:00:00Z | b | 25 | 25 | 25
2024-03-31T03:00:00Z | b | NULL | 25 | 26.666667
2024-03-31T04:00:00Z | b | NULL | 25 | 28.333333
2024-03-31T05:00:00Z | b | 30 | 30 | 30

query a range wider than the data: no value before the first or after the last reading
SELECT hour, temp, locf(temp) OVER w AS prev, interpolate(temp, hour) OVER w AS line
FROM (
  SELECT time_bucket_gapfill(INTERVAL '2 hours', time, '2024-03-30T22:00:00Z', '2024-03-31T10:00:00Z') AS hour,
         avg(temp) AS temp
  FROM climate WHERE device_id = 'a' GROUP BY 1)
WINDOW w AS (ORDER BY hour)
ORDER BY hour
----
hour | temp | prev | line
2024-03-30T22:00:00Z | NULL | NULL | NULL
2024-03-31T00:00:00Z | 11 | 11 | 11
2024-03-31T02:00:00Z | NULL | 11 | 15
2024-03-31T04:00:00Z | 19 | 19 | 19
2024-03-31T06:00:00Z | NULL | 19 | NULL
2024-03-31T08:00:00Z | NULL | 19 | NULL

query without other GROUP BY columns, one series that gets its buckets even with no rows
SELECT time_bucket_gapfill(INTERVAL '1 hour', time, '2024-01-01T00:00:00Z', '2024-01-01T03:00:00Z') AS hour, count(*) AS n
FROM climate WHERE time < '2024-01-01T03:00:00Z' GROUP BY 1 ORDER BY 1
----
hour | n
2024-01-01T00:00:00Z | NULL
2024-01-01T01:00:00Z | NULL
2024-01-01T02:00:00Z | NULL

query Berlin days over the DST change, a day with no readings included
SELECT time_bucket_gapfill(INTERVAL '1 day', time, '2024-03-30T00:00:00Z', '2024-04-02T00:00:00Z', 'Europe/Berlin') AS day,
       count(*) AS n, coalesce(count(*), 0) AS n0
FROM climate GROUP BY 1 ORDER BY 1
----
day | n | n0
2024-03-29T23:00:00Z | 1 | 1
2024-03-30T23:00:00Z | 10 | 10
2024-03-31T22:00:00Z | 1 | 1
2024-04-01T22:00:00Z | NULL | 0

query rows outside the range are kept; start is rounded down to its bucket
SELECT time_bucket_gapfill(INTERVAL '1 hour', time, '2024-03-31T02:30:00Z', '2024-03-31T04:00:00Z') AS hour, avg(temp) AS temp
FROM climate WHERE device_id = 'a' GROUP BY 1 ORDER BY 1
----
hour | temp
2024-03-31T00:00:00Z | 10
2024-03-31T01:00:00Z | 12
2024-03-31T02:00:00Z | NULL
2024-03-31T03:00:00Z | NULL
2024-03-31T04:00:00Z | 18
2024-03-31T05:00:00Z | 20

query counters per 30 minutes with gaps, both meters, the range from parameters-like constants
SELECT time_bucket_gapfill(INTERVAL '30 minutes', time, TIMESTAMP '2024-03-31T00:00:00Z', TIMESTAMP '2024-03-31T00:00:00Z' + INTERVAL '90 minutes') AS b,
       device_id, max(energy) AS top
FROM power GROUP BY 1, 2 ORDER BY 2, 1
----
b | device_id | top
2024-03-31T00:00:00Z | m1 | 125
2024-03-31T00:30:00Z | m1 | 30
2024-03-31T01:00:00Z | m1 | NULL
2024-03-31T00:00:00Z | m2 | 0
2024-03-31T00:30:00Z | m2 | 60
2024-03-31T01:00:00Z | m2 | 90

query locf also fills sparse fields on raw rows
SELECT time, hum, locf(hum) OVER (ORDER BY time) AS hum_then FROM climate WHERE device_id = 'a' ORDER BY time
----
time | hum | hum_then
2024-03-31T00:00:00Z | 50 | 50
2024-03-31T01:00:00Z | NULL | 50
2024-03-31T04:00:00Z | 40 | 40
2024-03-31T05:00:00Z | NULL | 40

query the README's Grafana panel query, macros expanded; locf sees only rows the query read
SELECT hour AS time, device_id, locf(t) OVER w AS temperature
FROM (SELECT time_bucket_gapfill('1 hour', time, '2024-03-31T03:00:00Z', '2024-03-31T06:00:00Z') AS hour,
             device_id, avg(temp) AS t
      FROM climate WHERE time BETWEEN '2024-03-31T03:00:00Z' AND '2024-03-31T06:00:00Z' GROUP BY 1, 2)
WINDOW w AS (PARTITION BY device_id ORDER BY hour) ORDER BY 1, 2
----
time | device_id | temperature
2024-03-31T03:00:00Z | a | NULL
2024-03-31T03:00:00Z | b | NULL
2024-03-31T04:00:00Z | a | 18
2024-03-31T04:00:00Z | b | NULL
2024-03-31T05:00:00Z | a | 20
2024-03-31T05:00:00Z | b | 30

error outside GROUP BY
SELECT time_bucket_gapfill(INTERVAL '1 hour', time, '2024-03-31T00:00:00Z', '2024-03-31T06:00:00Z') FROM climate
----
time_bucket_gapfill() belongs in GROUP BY

error start must be before end
SELECT time_bucket_gapfill(INTERVAL '1 hour', time, '2024-03-31T06:00:00Z', '2024-03-31T00:00:00Z') AS h, count(*) FROM climate GROUP BY 1
----
time_bucket_gapfill: start must be before end

error the range must be constant
SELECT time_bucket_gapfill(INTERVAL '1 hour', time, time, '2024-03-31T00:00:00Z') AS h, count(*) FROM climate GROUP BY 1
----
time_bucket_gapfill: the start must be a constant

error the range must not be NULL
SELECT time_bucket_gapfill(INTERVAL '1 hour', time, NULL, '2024-03-31T00:00:00Z') AS h, count(*) FROM climate GROUP BY 1
----
time_bucket_gapfill: the start must not be NULL

error only one per GROUP BY
SELECT time_bucket_gapfill(INTERVAL '1 hour', time, '2024-03-31T00:00:00Z', '2024-03-31T06:00:00Z') AS h,
       time_bucket_gapfill(INTERVAL '2 hours', time, '2024-03-31T00:00:00Z', '2024-03-31T06:00:00Z') AS h2, count(*)
FROM climate GROUP BY 1, 2
----
only one time_bucket_gapfill() may appear in a GROUP BY

error not inside another expression
SELECT date_trunc('day', time_bucket_gapfill(INTERVAL '1 hour', time, '2024-03-31T00:00:00Z', '2024-03-31T06:00:00Z')) AS h, count(*)
FROM climate GROUP BY 1
----
time_bucket_gapfill() must be a GROUP BY expression of its own

error a zero interval
SELECT time_bucket_gapfill(INTERVAL '0 hours', time, '2024-03-31T00:00:00Z', '2024-03-31T06:00:00Z') AS h, count(*) FROM climate GROUP BY 1
----
time_bucket_gapfill: the interval must be positive

error an unknown zone
SELECT time_bucket_gapfill(INTERVAL '1 day', time, '2024-03-31T00:00:00Z', '2024-04-06T00:00:00Z', 'Europe/Atlantis') AS h, count(*) FROM climate GROUP BY 1
----
time_bucket_gapfill: unknown time zone 'Europe/Atlantis'

error too many buckets
SELECT time_bucket_gapfill(INTERVAL '1 millisecond', time, '2024-03-31T00:00:00Z', '2024-04-01T00:00:00Z') AS h, count(*) FROM climate GROUP BY 1
----
time_bucket_gapfill: the range holds more than 1000000 buckets
