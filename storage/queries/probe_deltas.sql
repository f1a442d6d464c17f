-- General-capability probes after editing minus the unedited model (delta = value - baseline).
-- baseline is the mean of a model's edits_done = 0 probe rows over all its runs (the unedited
-- model does not depend on method or seed); value is the mean over runs of the same model,
-- method and batch_size. Rows with edits_done = 0 are included (delta 0 up to seed noise).
-- baseline and delta are NULL when the model has no edits_done = 0 row for that task and metric.
-- param task: only this probe task (e.g. mmlu); default all.
-- param sweep_id: only runs of this sweep, for the baseline too; default all runs.
WITH p AS (
    SELECT r.model, r.method, r.batch_size, p.run_id, p.edits_done, p.task, p.metric, p.value
    FROM runs AS r
    JOIN probes AS p USING (run_id)
    WHERE ($task IS NULL OR p.task = CAST($task AS VARCHAR))
      AND ($sweep_id IS NULL OR r.sweep_id = CAST($sweep_id AS VARCHAR))
),
baseline AS (
    SELECT model, task, metric, avg(value) AS baseline
    FROM p
    WHERE edits_done = 0
    GROUP BY model, task, metric
),
edited AS (
    SELECT model, method, batch_size, task, metric, edits_done, avg(value) AS value, count(*) AS n_runs
    FROM p
    GROUP BY model, method, batch_size, task, metric, edits_done
)
SELECT
    e.model, e.method, e.batch_size, e.task, e.metric, e.edits_done,
    e.value, b.baseline, e.value - b.baseline AS delta, e.n_runs
FROM edited AS e
LEFT JOIN baseline AS b USING (model, task, metric)
ORDER BY e.model, e.method, e.batch_size, e.task, e.metric, e.edits_done
