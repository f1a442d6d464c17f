-- Runs with their status, failure reason and progress (largest edits_done measured).
-- param sweep_id: only runs of this sweep; default all runs.
-- param status: only runs with this status (pending, running, finished, failed); default all.
SELECT
    r.run_id, r.sweep_id, r.model, r.method, r.dataset, r.batch_size, r.n_edits, r.seed,
    r.status, r.error, r.attempts,
    (SELECT max(m.edits_done) FROM metrics AS m WHERE m.run_id = r.run_id) AS last_edits_done,
    r.created_at, r.started_at, r.finished_at
FROM runs AS r
WHERE ($sweep_id IS NULL OR r.sweep_id = CAST($sweep_id AS VARCHAR))
  AND ($status IS NULL OR r.status = CAST($status AS VARCHAR))
ORDER BY r.sweep_id, r.model, r.method, r.dataset, r.batch_size, r.n_edits, r.seed, r.run_id
