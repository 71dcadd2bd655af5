-- Messages per site over the last 10 s, every 5 s.
SELECT tag('site') AS site, count(*) AS n, approx_distinct(device_id()) AS devices,
       window_start() / 1000000000 AS from_s, window_end() / 1000000000 AS to_s
FROM 'devices/#'
GROUP BY tag('site'), HOP('10s', '5s')
