-- Time per stage: totals and rates per (model, method, batch_size, stage).
-- seconds_per_run averages over the runs that recorded the stage; seconds_per_item divides by
-- the summed items (NULL when no row gave items).
-- param sweep_id: only runs of this sweep; default all runs.
SELECT
    r.model,
    r.method,
    r.batch_size,
    t.stage,
    count(DISTINCT t.run_id) AS n_runs,
    count(*) AS n_calls,
    sum(t.seconds) AS total_seconds,
    sum(t.seconds) / count(DISTINCT t.run_id) AS seconds_per_run,
    CAST(sum(t.items) AS BIGINT) AS items,
    sum(t.seconds) / nullif(sum(t.items), 0) AS seconds_per_item
FROM runs AS r
JOIN timings AS t USING (run_id)
WHERE ($sweep_id IS NULL OR r.sweep_id = CAST($sweep_id AS VARCHAR))
GROUP BY r.model, r.method, r.batch_size, t.stage
ORDER BY r.model, r.method, r.batch_size, t.stage
