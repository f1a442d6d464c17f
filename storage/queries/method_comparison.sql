-- Methods side by side at N edits, in the column layout of the paper's Table 1 (mean over seeds).
-- One row per (model, dataset, method, batch_size). Columns "Eff.", "Gen.", "Spe.", "Flu.",
-- "Consis." are the means of the metrics efficacy, generalization, specificity, fluency and
-- consistency at edits_done = N; zsRE has no Flu./Consis. (NULL). dataset is metrics.dataset.
-- param n_edits: edits_done to compare at; default each run's final edits_done (runs.n_edits). 0 gives the unedited model.
-- param sweep_id: only runs of this sweep; default all runs.
WITH picked AS (
    SELECT r.run_id, r.model, r.method, r.batch_size, r.seed, m.dataset, m.metric, m.value, m.edits_done
    FROM runs AS r
    JOIN metrics AS m USING (run_id)
    WHERE m.edits_done = coalesce(CAST($n_edits AS INTEGER), r.n_edits)
      AND ($sweep_id IS NULL OR r.sweep_id = CAST($sweep_id AS VARCHAR))
)
SELECT
    model,
    dataset,
    method,
    batch_size,
    edits_done AS n_edits,
    count(DISTINCT run_id) AS n_runs,
    avg(value) FILTER (WHERE metric = 'efficacy') AS "Eff.",
    avg(value) FILTER (WHERE metric = 'generalization') AS "Gen.",
    avg(value) FILTER (WHERE metric = 'specificity') AS "Spe.",
    avg(value) FILTER (WHERE metric = 'fluency') AS "Flu.",
    avg(value) FILTER (WHERE metric = 'consistency') AS "Consis."
FROM picked
GROUP BY model, dataset, method, batch_size, edits_done
ORDER BY model, dataset, method, batch_size, n_edits
