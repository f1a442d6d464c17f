"""The sweep on a multi-node Ray cluster (one machine, separate raylets): placement and node loss.

``ray.cluster_utils.Cluster`` starts a head (no CPUs: the driver and the writer only) and five
worker nodes, each a raylet with its own resources and its own object store: three "GPU" nodes
(the ``node-kind: gpu`` label and one ``editor_slot``, standing in for a GPU each) and two "CPU"
nodes (``node-kind: cpu``). The sweep config places the work as a user would on a real cluster
(``cluster/placement.py``): editors on GPU nodes, one per node; statistics shards spread over CPU
nodes; evaluations (rewrite metrics + probes) on CPU nodes with no GPU.

Two toy-world models, AlphaEdit, 40 edits each in batches of 10, evaluated at 0, 20 and 40 edits.
Ray's state API (task and actor node ids) must show the statistics shards on both CPU nodes, each
editor on its own GPU node, the evaluations on CPU nodes only and the writer on the head. Then the
same sweep runs again while the node of one editor is removed (``cluster.remove_node``, SIGKILL)
after its first batch: Ray restarts the editor on the spare GPU node, which reads the checkpoint
the dead node wrote to the artifact store, and the sweep ends with the same rows and values (and
bit-identical final deltas) as the uninterrupted run.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from cluster.config import TOY_CONFIG_PATH, SweepConfig, parse_config
from cluster.events import BatchEdited, ProgressEvent
from cluster.workers import checkpoint_codec, checkpoint_key
from storage.artifacts import ArtifactStore
from storage.hashing import config_hash

pytestmark = [pytest.mark.integration, pytest.mark.multinode]

TIMEOUT = 120
GPU = {"node-kind": "gpu"}
CPU = {"node-kind": "cpu"}
MODELS = ("toy-a", "toy-b")
NODE_ARGS = {"object_store_memory": 150 * 2**20, "dashboard_agent_listen_port": 0}
METRICS = ("SELECT r.model, m.edits_done, m.dataset, m.metric, m.value, m.n_cases FROM metrics m "
           "JOIN runs r USING (run_id) ORDER BY ALL")
PROBES = ("SELECT r.model, p.edits_done, p.task, p.metric, p.value FROM probes p JOIN runs r USING (run_id) "
          "ORDER BY ALL")
TIMINGS = ("SELECT r.model, t.stage, t.step FROM timings t JOIN runs r USING (run_id) "
           "WHERE t.stage NOT IN ('key_stats', 'projector') ORDER BY ALL")  # computed once, by the first sweep


def _config(tmp: Path, sweep_id: str) -> SweepConfig:
    raw = yaml.safe_load(TOY_CONFIG_PATH.read_text())
    base = raw["models"][0]
    raw["models"] = [{**base, "name": name, "revision": f"toy-{name}",  # own statistics per model
                      "resources": {"editor_slot": 1}, "labels": GPU} for name in MODELS]
    raw.update(methods=["alphaedit"], n_edits=[40], batch_sizes=[10], eval_every=20, checkpoint_every=1,
               probes={"tasks": ["toy_knowledge"], "limit": 4}, metrics={"generation_records": 0, "max_records": 4},
               stats_shards=2, hparams_overrides=[{"mom2_n_samples": 100, "v_num_grad_steps": 5}],
               stats_placement={"labels": CPU, "spread": True}, eval_placement={"num_gpus": 0, "labels": CPU},
               results=str(tmp / f"{sweep_id}.duckdb"), artifact_root=str(tmp / "artifacts"), sweep_id=sweep_id)
    return parse_config(raw, "multinode test")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (0 CPUs) + GPU nodes gpu0..gpu2 + CPU nodes cpu0, cpu1; {name: node id} in ``cluster.ids``."""
    import ray
    import ray._common.utils as common_utils
    import ray._private.utils as private_utils
    from ray.cluster_utils import Cluster

    # The test cluster would point /tmp/ray/ray_current_cluster (what a bare `ray.init()` on this
    # machine joins) at itself and delete it on shutdown; other Ray users of the machine keep theirs.
    write, reset = private_utils.write_ray_address, common_utils.reset_ray_address
    private_utils.write_ray_address = lambda *a, **k: None
    common_utils.reset_ray_address = lambda *a, **k: None
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_port": 0, **NODE_ARGS})  # the state API needs it
    try:
        nodes = {f"gpu{i}": c.add_node(num_cpus=1, resources={"editor_slot": 1}, labels=GPU, **NODE_ARGS)
                 for i in range(3)}
        nodes.update({f"cpu{i}": c.add_node(num_cpus=1, labels=CPU, **NODE_ARGS) for i in range(2)})
        c.wait_for_nodes(timeout=TIMEOUT)
        ray.init(address=c.address, log_to_driver=False)
        c.nodes = nodes
        c.ids = {name: n.node_id for name, n in nodes.items()} | {"head": c.head_node.node_id}
        c.state_address = c.webui_url if "://" in c.webui_url else f"http://{c.webui_url}"
        yield c
    finally:
        try:
            ray.shutdown()
            c.shutdown()
        finally:
            private_utils.write_ray_address, common_utils.reset_ray_address = write, reset


def _sweep(tmp: Path, sweep_id: str, on_progress=lambda msg: None):
    import ray
    from ray.util.state import list_actors

    from cluster.executor import RayExecutor
    from cluster.pipeline import run_sweep, start_writer

    cfg = _config(tmp, sweep_id)
    ex = RayExecutor()
    writer = start_writer(cfg.results, ex)
    try:
        statuses = run_sweep(cfg, sweep_id, writer, ArtifactStore(cfg.artifact_root), None, executor=ex,
                             on_progress=on_progress)
        rows = {name: ray.get(writer.query.remote(sql), timeout=TIMEOUT)
                for name, sql in (("metrics", METRICS), ("probes", PROBES), ("timings", TIMINGS))}
        alive = list_actors(address=_address(), filters=[("class_name", "=", "ResultWriter"), ("state", "=", "ALIVE")])
        assert len(alive) == 1, alive
        writer_node = alive[0].node_id
    finally:
        ray.get(writer.close.remote(), timeout=60)
        ray.kill(writer)
    return cfg, statuses, rows, writer_node


_ADDRESS: list[str] = []


def _address() -> str:
    return _ADDRESS[0]


def _tasks(name: str, since: set[str] = frozenset()) -> list:
    """Every attempt of the tasks called ``name`` (function or ``Class.method``), newest state each."""
    from ray.util.state import list_tasks

    return [t for t in list_tasks(address=_address(), filters=[("name", "=", name)], limit=10_000,
                                  raise_on_missing_output=False)
            if t.task_id not in since]


def _settled(names: tuple[str, ...], since: set[str] = frozenset(), dead: set[str] = frozenset()) -> dict[str, list]:
    """Tasks by name once every one of them has a final state (task events reach the GCS asynchronously;
    a task that was running on a removed node (``dead``) may never report one)."""
    deadline = time.monotonic() + 30
    while True:
        got = {n: _tasks(n, since) for n in names}
        final = all(t.state in ("FINISHED", "FAILED") or t.node_id in dead for ts in got.values() for t in ts)
        if final or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def _final_state(cfg: SweepConfig, model: str):
    cell = next(c for c in cfg.cells() if c.model.name == model)
    key = checkpoint_key(cell.run_id(cfg.sweep_id), config_hash(cell.config()), cell.n_edits)
    return ArtifactStore(cfg.artifact_root).get(key, checkpoint_codec())


KINDS = ("corpus_shard_stats", "merge_and_store", "load_stored", "null_space_projectors", "evaluate_checkpoint",
         "evaluate_unedited", "EditorWorker.begin", "EditorWorker.edit")


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    """The uninterrupted sweep on all nodes; (tmp, cfg, rows, tasks by kind, writer node, editor node by model)."""
    from ray.util.state import list_actors

    _ADDRESS[:] = [cluster.state_address]
    tmp = tmp_path_factory.mktemp("multinode")
    cfg, statuses, rows, writer_node = _sweep(tmp, "ref")
    assert set(statuses.values()) == {"finished"}, statuses
    tasks = _settled(KINDS)
    editors = {a.name.split(":")[2]: a.node_id for a in list_actors(
        address=_address(), filters=[("class_name", "=", "EditorWorker")], limit=1000) if a.name.startswith("editor:ref:")}
    return tmp, cfg, rows, tasks, writer_node, editors


def test_work_runs_where_the_config_places_it(cluster, reference) -> None:
    _, _, rows, tasks, writer_node, editors = reference
    ids = cluster.ids
    name_of = {v: k for k, v in ids.items()}
    gpu = {ids[f"gpu{i}"] for i in range(3)}
    cpu = {ids["cpu0"], ids["cpu1"]}
    seen = {kind: sorted({name_of.get(t.node_id, t.node_id) for t in ts}) for kind, ts in tasks.items()}
    logging.getLogger(__name__).warning("nodes per kind of work: %s; editors %s; writer %s", seen,
                                        {m: name_of[n] for m, n in editors.items()}, name_of[writer_node])
    shards = tasks["corpus_shard_stats"]
    assert len(shards) == 2 * len(MODELS) and all(t.state == "FINISHED" for t in shards), shards
    assert {t.node_id for t in shards} == cpu, f"statistics shards ran on {seen['corpus_shard_stats']}, not on both CPU nodes"
    for kind in ("merge_and_store", "load_stored"):  # the statistics' helper tasks go where the shards go
        assert tasks[kind] and {t.node_id for t in tasks[kind]} <= cpu, (kind, seen[kind])
    # each model's editor on its own GPU node, and every call of it there
    assert set(editors) == set(MODELS) and len(set(editors.values())) == len(MODELS), editors
    assert set(editors.values()) <= gpu, editors
    for kind in ("EditorWorker.begin", "EditorWorker.edit"):
        assert {t.node_id for t in tasks[kind]} == set(editors.values()), (kind, seen[kind])
    assert {t.node_id for t in tasks["null_space_projectors"]} <= gpu, seen["null_space_projectors"]
    # evaluations (rewrite metrics + probes) on CPU nodes only: never beside an editor, never on the head
    evals = tasks["evaluate_checkpoint"]
    assert len(evals) >= 2 * len(MODELS) and {t.node_id for t in evals} <= cpu, seen["evaluate_checkpoint"]
    unedited = tasks["evaluate_unedited"]  # 0 edits: one per model (their revisions differ), also on CPU nodes
    assert len(unedited) >= len(MODELS) and {t.node_id for t in unedited} <= cpu, seen["evaluate_unedited"]
    assert writer_node == ids["head"], name_of.get(writer_node, writer_node)
    assert rows["metrics"].filter(pl.col("metric") == "efficacy").height > 0
    for model in MODELS:
        points = rows["metrics"].filter(pl.col("model") == model)["edits_done"].unique().sort().to_list()
        assert points == [0, 20, 40], (model, points)


def test_removed_node_mid_sweep_ends_with_the_same_rows(cluster, reference, caplog) -> None:
    from ray.util.state import list_actors

    from cluster.pipeline import editor_actor_name

    tmp, ref_cfg, ref_rows, ref_tasks, _, _ = reference
    before = {t.task_id for ts in ref_tasks.values() for t in ts}
    removed: dict[str, str] = {}
    lock = threading.Lock()

    def remove_editor_node_after_first_batch(event: ProgressEvent) -> None:
        if not (isinstance(event, BatchEdited) and event.run_id.startswith("cut:toy-a:") and event.edits_done == 10):
            return
        with lock:
            if removed:
                return
            name = editor_actor_name("cut", "toy-a")
            node_id = next(a.node_id for a in list_actors(address=_address(), filters=[("name", "=", name)]))
            node = next(n for n in cluster.nodes.values() if n.node_id == node_id)
            cluster.remove_node(node, allow_graceful=False)  # SIGKILL: the node is lost, not drained
            removed["node"] = node_id

    with caplog.at_level(logging.INFO, logger="cluster.pipeline"):
        cfg, statuses, rows, _ = _sweep(tmp, "cut", remove_editor_node_after_first_batch)
    assert removed, "the editor's node was never removed"
    assert set(statuses.values()) == {"finished"}, statuses
    name_of = {v: k for k, v in cluster.ids.items()}

    # The editor of toy-a came back on the spare GPU node and resumed there from the checkpoint the
    # removed node had written to the artifact store.
    actor = next(a for a in list_actors(address=_address(), filters=[("name", "=", editor_actor_name("cut", "toy-a"))]))
    tasks = _settled(KINDS, since=before, dead={removed["node"]})
    calls = {kind: [t for t in tasks[kind] if t.actor_id == actor.actor_id and t.node_id]  # ran somewhere
             for kind in ("EditorWorker.begin", "EditorWorker.edit")}
    spare = {cluster.ids[f"gpu{i}"] for i in range(3)} - {removed["node"]}
    begun_on = [name_of.get(t.node_id, t.node_id) for t in calls["EditorWorker.begin"]]
    assert {t.node_id for t in calls["EditorWorker.begin"]} & {removed["node"]}, begun_on
    after = {t.node_id for t in calls["EditorWorker.begin"]} - {removed["node"]}
    assert len(after) == 1 and after <= spare, begun_on
    assert any(t.node_id in after and t.state == "FINISHED" for t in calls["EditorWorker.edit"]), "no edit after"
    resumed = re.findall(r":toy-a:\S+: resumed at (\d+) edits", caplog.text)
    assert resumed and int(resumed[-1]) >= 10, "toy-a never resumed from a checkpoint: " + caplog.text[-3000:]
    logging.getLogger(__name__).warning("removed %s; toy-a begun on %s, resumed at %s edits",
                                        name_of[removed["node"]], begun_on, resumed)

    for name in ("metrics", "probes", "timings"):
        assert rows[name].equals(ref_rows[name]), f"{name} differ from the uninterrupted run"
    assert rows["metrics"].select("model", "edits_done", "dataset", "metric").is_duplicated().sum() == 0
    for model in MODELS:
        (a, xa), (b, xb) = _final_state(ref_cfg, model), _final_state(cfg, model)
        assert a.n_edits == b.n_edits == 40 and a.case_ids == b.case_ids
        for key in a.deltas:
            assert torch.equal(a.deltas[key], b.deltas[key]), f"{model}: delta {key} differs"
            assert torch.equal(xa[f"weight.{key}"], xb[f"weight.{key}"]), f"{model}: weight {key} differs"
