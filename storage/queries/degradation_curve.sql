-- Rewrite metrics over the number of edits done (mean and std over runs), for curves.
-- One row per (model, method, batch_size, dataset, metric, edits_done); edits_done = 0 is the
-- unedited model. std is NULL when only one run contributes.
-- param metric: only this metric (e.g. efficacy); default all.
-- param dataset: only this metrics.dataset (e.g. counterfact); default all.
-- param sweep_id: only runs of this sweep; default all runs.
SELECT
    r.model,
    r.method,
    r.batch_size,
    m.dataset,
    m.metric,
    m.edits_done,
    avg(m.value) AS value,
    stddev_samp(m.value) AS std,
    count(*) AS n_runs
FROM runs AS r
JOIN metrics AS m USING (run_id)
WHERE ($metric IS NULL OR m.metric = CAST($metric AS VARCHAR))
  AND ($dataset IS NULL OR m.dataset = CAST($dataset AS VARCHAR))
  AND ($sweep_id IS NULL OR r.sweep_id = CAST($sweep_id AS VARCHAR))
GROUP BY r.model, r.method, r.batch_size, m.dataset, m.metric, m.edits_done
ORDER BY r.model, r.method, r.batch_size, m.dataset, m.metric, m.edits_done
