# increase / rate / derivative. m1's counter resets between 00:20 (125) and 00:30 (5).

query increase and rate count a decrease as a reset; derivative is last minus first
SELECT device_id, increase(energy, time) AS inc, rate(energy, time) AS per_s,
       derivative(energy, time) AS d_per_s, derivative(energy, time, INTERVAL '1 minute') AS d_per_min
FROM power GROUP BY device_id ORDER BY device_id
----
device_id | inc | per_s | d_per_s | d_per_min
m1 | 55 | 0.018333 | -0.023333 | -1.4
m2 | 90 | 0.025 | 0.025 | 1.5

query per 30-minute bucket; a bucket with one reading has no rate
SELECT time_bucket(INTERVAL '30 minutes', time) AS b, device_id, increase(energy, time) AS inc, rate(energy, time) AS per_s
FROM power GROUP BY 1, 2 ORDER BY 2, 1
----
b | device_id | inc | per_s
2024-03-31T00:00:00Z | m1 | 25 | 0.020833
2024-03-31T00:30:00Z | m1 | 25 | 0.020833
2024-03-31T00:00:00Z | m2 | NULL | NULL
2024-03-31T00:30:00Z | m2 | NULL | NULL
2024-03-31T01:00:00Z | m2 | NULL | NULL

query as a window over the previous row: the rate between neighbouring readings
SELECT device_id, time, energy,
       rate(energy, time) OVER (PARTITION BY device_id ORDER BY time ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS per_s,
       increase(energy, time) OVER (PARTITION BY device_id ORDER BY time ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS step
FROM power ORDER BY device_id, time
----
device_id | time | energy | per_s | step
m1 | 2024-03-31T00:00:00Z | 100 | NULL | NULL
m1 | 2024-03-31T00:10:00Z | 110 | 0.016667 | 10
m1 | 2024-03-31T00:20:00Z | 125 | 0.025 | 15
m1 | 2024-03-31T00:30:00Z | 5 | 0.008333 | 5
m1 | 2024-03-31T00:40:00Z | 20 | 0.025 | 15
m1 | 2024-03-31T00:50:00Z | 30 | 0.016667 | 10
m2 | 2024-03-31T00:00:00Z | 0 | NULL | NULL
m2 | 2024-03-31T00:30:00Z | 60 | 0.033333 | 60
m2 | 2024-03-31T01:00:00Z | 90 | 0.016667 | 30

query a running increase since the series' first reading
SELECT device_id, time, increase(energy, time) OVER (PARTITION BY device_id ORDER BY time) AS total
FROM power WHERE device_id = 'm1' ORDER BY time
----
device_id | time | total
m1 | 2024-03-31T00:00:00Z | NULL
m1 | 2024-03-31T00:10:00Z | 10
m1 | 2024-03-31T00:20:00Z | 25
m1 | 2024-03-31T00:30:00Z | 30
m1 | 2024-03-31T00:40:00Z | 45
m1 | 2024-03-31T00:50:00Z | 55

query no rows, and a gauge (temperature) per hour
SELECT (SELECT rate(energy, time) FROM power WHERE device_id = 'none') AS nothing,
       (SELECT derivative(temp, time, INTERVAL '1 hour') FROM climate WHERE device_id = 'a') AS a_per_hour
----
nothing | a_per_hour
NULL | 2

query NULL values are skipped (c has no hum; a has two)
SELECT device_id, derivative(hum, time, INTERVAL '1 hour') AS d FROM climate GROUP BY 1 ORDER BY 1
----
device_id | d
a | -2.5
b | NULL
c | NULL

error the value must be a number
SELECT rate(status, time) FROM climate
----
rate: the value must be a number, got Utf8

error the unit must not be months
SELECT derivative(temp, time, INTERVAL '1 month') FROM climate
----
derivative: the unit must be a positive interval without months

error the unit must be positive
SELECT derivative(temp, time, INTERVAL '0 seconds') FROM climate
----
derivative: the unit must be a positive interval without months

error the unit must be a constant
SELECT derivative(temp, time, CASE WHEN temp > 1 THEN INTERVAL '1 hour' END) FROM climate
----
derivative: the unit must be a constant interval

error rate takes two arguments
SELECT rate(energy, time, INTERVAL '1 hour') FROM power
----
rate(counter, time) takes 2 arguments, got 3
