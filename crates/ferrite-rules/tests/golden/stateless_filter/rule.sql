-- Hot readings, enriched with the device's registry tags.
SELECT device_id() AS device,
       temp,
       round(temp * 1.8 + 32, 1) AS fahrenheit,
       tag('site') AS site,
       topic(4) AS measurement,
       CASE WHEN temp > 40 THEN 'critical' ELSE 'warning' END AS severity
FROM 'devices/+/telemetry/#'
WHERE temp > 30 AND tag('site') LIKE 'plant-%'
