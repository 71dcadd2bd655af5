# time_bucket(interval, time [, zone]) and DataFusion's date_bin / date_trunc beside it.
# The dataset is described in tests/golden.rs.

query hourly buckets per device, with the late correction of a's 01:00 reading
SELECT time_bucket(INTERVAL '1 hour', time) AS hour, device_id, count(*) AS n, avg(temp) AS temp
FROM climate WHERE device_id IN ('a', 'b') GROUP BY 1, 2 ORDER BY 2, 1
----
hour | device_id | n | temp
2024-03-31T00:00:00Z | a | 1 | 10
2024-03-31T01:00:00Z | a | 1 | 12
2024-03-31T04:00:00Z | a | 1 | 18
2024-03-31T05:00:00Z | a | 1 | 20
2024-03-31T00:00:00Z | b | 1 | 20
2024-03-31T02:00:00Z | b | 2 | 25
2024-03-31T05:00:00Z | b | 1 | 30

query date_bin agrees with time_bucket for widths that divide a day
SELECT count(*) AS n FROM climate
WHERE date_bin(INTERVAL '15 minutes', time) <> time_bucket(INTERVAL '15 minutes', time)
   OR date_trunc('hour', time) <> time_bucket(INTERVAL '1 hour', time)
----
n
0

query an interval may be written as a string
SELECT time_bucket('30 minutes', time) AS b, count(*) AS n FROM climate WHERE device_id = 'b' GROUP BY 1 ORDER BY 1
----
b | n
2024-03-31T00:30:00Z | 1
2024-03-31T02:00:00Z | 1
2024-03-31T02:30:00Z | 1
2024-03-31T05:00:00Z | 1

query UTC days: c's 23:30 reading is still March 30
SELECT time_bucket(INTERVAL '1 day', time) AS day, count(*) AS n, min(temp) AS lo, max(temp) AS hi
FROM climate GROUP BY 1 ORDER BY 1
----
day | n | lo | hi
2024-03-30T00:00:00Z | 2 | 5 | 7
2024-03-31T00:00:00Z | 10 | 9 | 30

query Berlin days: midnight is 23:00Z in winter, 22:00Z from March 31 (a 23-hour day)
SELECT time_bucket(INTERVAL '1 day', time, 'Europe/Berlin') AS day, count(*) AS n, min(temp) AS lo, max(temp) AS hi
FROM climate GROUP BY 1 ORDER BY 1
----
day | n | lo | hi
2024-03-29T23:00:00Z | 1 | 5 | 5
2024-03-30T23:00:00Z | 10 | 7 | 30
2024-03-31T22:00:00Z | 1 | 11 | 11

query the DST day is 23 hours long
SELECT time_bucket(INTERVAL '1 day', TIMESTAMP '2024-03-31T12:00:00Z', 'Europe/Berlin') AS day,
       time_bucket(INTERVAL '1 day', TIMESTAMP '2024-03-31T21:59:59Z', 'Europe/Berlin') AS same_day,
       time_bucket(INTERVAL '1 day', TIMESTAMP '2024-03-31T22:00:00Z', 'Europe/Berlin') AS next_day,
       time_bucket(INTERVAL '1 day', TIMESTAMP '2024-10-27T22:59:59Z', 'Europe/Berlin') AS autumn_day
----
day | same_day | next_day | autumn_day
2024-03-30T23:00:00 | 2024-03-30T23:00:00 | 2024-03-31T22:00:00 | 2024-10-26T22:00:00

query weeks start on Monday, months on the 1st, both at local midnight
SELECT time_bucket(INTERVAL '7 days', time) AS week_utc,
       time_bucket(INTERVAL '1 week', time, 'Europe/Berlin') AS week_berlin,
       time_bucket(INTERVAL '1 month', time, 'Europe/Berlin') AS month_berlin,
       count(*) AS n
FROM climate GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
----
week_utc | week_berlin | month_berlin | n
2024-03-25T00:00:00Z | 2024-03-24T23:00:00Z | 2024-02-29T23:00:00Z | 11
2024-03-25T00:00:00Z | 2024-03-31T22:00:00Z | 2024-03-31T22:00:00Z | 1

query a half-hour zone aligns hours to :30 UTC
SELECT time, time_bucket(INTERVAL '1 hour', time, 'Asia/Kolkata') AS hour_ist FROM climate WHERE device_id = 'b' ORDER BY time
----
time | hour_ist
2024-03-31T00:30:00Z | 2024-03-31T00:30:00Z
2024-03-31T02:15:00Z | 2024-03-31T01:30:00Z
2024-03-31T02:45:00Z | 2024-03-31T02:30:00Z
2024-03-31T05:00:00Z | 2024-03-31T04:30:00Z

query NULL arguments give NULL
SELECT time_bucket(NULL, time) AS no_interval, time_bucket(INTERVAL '1 day', time, NULL) AS no_zone,
       time_bucket(INTERVAL '1 day', NULL) AS no_time
FROM climate WHERE device_id = 'a' AND time = '2024-03-31T00:00:00Z'
----
no_interval | no_zone | no_time
NULL | NULL | NULL

error a zero interval
SELECT time_bucket(INTERVAL '0 minutes', time) FROM climate
----
time_bucket: the interval must be positive

error a negative interval
SELECT time_bucket(INTERVAL '-1 hour', time) FROM climate
----
time_bucket: the interval must be positive

error months mixed with days
SELECT time_bucket(INTERVAL '1 month 2 days', time) FROM climate
----
time_bucket: an interval of months cannot also have days or a time part

error an unknown time zone
SELECT time_bucket(INTERVAL '1 day', time, 'Mars/Olympus_Mons') FROM climate
----
time_bucket: unknown time zone 'Mars/Olympus_Mons'

error the interval must be a constant
SELECT time_bucket(CASE WHEN temp > 15 THEN INTERVAL '1 hour' ELSE INTERVAL '2 hours' END, time) FROM climate
----
time_bucket: the interval must be a constant

error the interval must be an interval
SELECT time_bucket(temp, time) FROM climate
----
time_bucket: interval must be an interval

error too few arguments
SELECT time_bucket(INTERVAL '1 hour') FROM climate
----
time_bucket(interval, time [, time zone]) takes 2 or 3 arguments, got 1
