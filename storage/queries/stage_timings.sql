-- Time per stage: totals and rates per (model, method, batch_size, stage).
-- part_of names the stage whose seconds already contain this stage's (targets and solve are inside
-- edit_batch): add up only the rows with part_of NULL. seconds_per_run averages over the runs that
-- recorded the stage; items sums timings.items, except for checkpoint, whose items are its size:
-- that goes to bytes, and items and seconds_per_item are NULL. seconds_per_item divides by items
-- (NULL when no row gave items). Per run: the view v_stage_times.
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
    CASE WHEN t.stage = 'checkpoint' THEN NULL ELSE CAST(sum(t.items) AS BIGINT) END AS items,
    CASE WHEN t.stage = 'checkpoint' THEN NULL ELSE sum(t.seconds) / nullif(sum(t.items), 0) END AS seconds_per_item,
    CASE WHEN t.stage IN ('targets', 'solve') THEN 'edit_batch' END AS part_of,
    CASE WHEN t.stage = 'checkpoint' THEN CAST(sum(t.items) AS BIGINT) END AS bytes
FROM runs AS r
JOIN timings AS t USING (run_id)
WHERE ($sweep_id IS NULL OR r.sweep_id = CAST($sweep_id AS VARCHAR))
GROUP BY r.model, r.method, r.batch_size, t.stage
ORDER BY r.model, r.method, r.batch_size, t.stage
