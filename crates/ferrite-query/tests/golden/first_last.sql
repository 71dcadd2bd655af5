# first(value, time) / last(value, time), and the latest row per device.

query first and last by time per device, skipping NULLs (c has no hum or status)
SELECT device_id, first(temp, time) AS first_temp, last(temp, time) AS last_temp,
       last(hum, time) AS last_hum, first(status, time) AS first_status, last(status, time) AS last_status
FROM climate GROUP BY device_id ORDER BY device_id
----
device_id | first_temp | last_temp | last_hum | first_status | last_status
a | 10 | 20 | 40 | ok | warn
b | 20 | 30 | 60 | ok | ok
c | 5 | 11 | NULL | NULL | NULL

query DataFusion's first_value/last_value with ORDER BY agree where there are no NULLs
SELECT device_id, first_value(temp ORDER BY time) AS f, last_value(temp ORDER BY time) AS l
FROM climate GROUP BY device_id ORDER BY device_id
----
device_id | f | l
a | 10 | 20
b | 20 | 30
c | 5 | 11

query first and last per bucket, the late correction included
SELECT time_bucket(INTERVAL '3 hours', time) AS b, first(temp, time) AS f, last(temp, time) AS l
FROM climate WHERE device_id = 'a' GROUP BY 1 ORDER BY 1
----
b | f | l
2024-03-31T00:00:00Z | 10 | 12
2024-03-31T03:00:00Z | 18 | 20

query across devices, the earliest and latest reading of all
SELECT first(device_id, time) AS first_device, last(device_id, time) AS last_device FROM climate
----
first_device | last_device
c | c

query over no rows, NULL
SELECT first(temp, time) AS f, last(temp, time) AS l FROM climate WHERE device_id = 'nobody'
----
f | l
NULL | NULL

query the latest row per device: DISTINCT ON keeps the whole row, NULLs too
SELECT DISTINCT ON (device_id) device_id, time, temp, hum, status
FROM climate ORDER BY device_id, time DESC
----
device_id | time | temp | hum | status
a | 2024-03-31T05:00:00Z | 20 | NULL | warn
b | 2024-03-31T05:00:00Z | 30 | NULL | NULL
c | 2024-03-31T22:30:00Z | 11 | NULL | NULL

query the latest value of each field per device: last() per column
SELECT device_id, max(time) AS seen, last(temp, time) AS temp, last(hum, time) AS hum
FROM climate GROUP BY device_id ORDER BY device_id
----
device_id | seen | temp | hum
a | 2024-03-31T05:00:00Z | 20 | 40
b | 2024-03-31T05:00:00Z | 30 | 60
c | 2024-03-31T22:30:00Z | 11 | NULL

query the latest counter reading per meter
SELECT DISTINCT ON (device_id) device_id, time, energy FROM power ORDER BY device_id, time DESC
----
device_id | time | energy
m1 | 2024-03-31T00:50:00Z | 30
m2 | 2024-03-31T01:00:00Z | 90

error first takes a time
SELECT first(temp) FROM climate
----
first(value, time) takes 2 arguments, got 1

error the time must be a timestamp
SELECT last(temp, hum) FROM climate
----
last: time must be a timestamp, got Float64
