-- Plausibility checks per device: each flag is its own state machine per device.
SELECT device_id() AS device, v,
       out_of_range(v, -40, 85) AS out_of_range,
       rate_of_change(v, 5) AS jump,
       stuck(v, 3) AS stuck,
       gap('30s') AS after_gap
FROM 'devices/+/telemetry'
WHERE out_of_range(v, -40, 85) OR rate_of_change(v, 5) OR stuck(v, 3) OR gap('30s')
