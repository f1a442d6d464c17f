"""The scheduling examples in cluster/schedule/ parse and start jobs/nightly.py as nightly-<date>."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

SCHEDULE = Path(__file__).resolve().parents[2] / "cluster" / "schedule"
CRON_FIELD = r"(\*|\d+)(/\d+)?"


def systemd_sections(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values]}} (systemd allows repeated keys; # and ; comment)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, {})
            continue
        assert section is not None and "=" in line, f"{path.name}: bad line {raw!r}"
        key, value = line.split("=", 1)
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def systemd_unescape(value: str) -> str:
    """What the shell receives: systemd turns %% into % and $$ into $."""
    assert not re.search(r"(?<!%)%(?!%)", value.replace("%%", "")), f"unescaped % specifier in {value!r}"
    return value.replace("%%", "%").replace("$$", "$")


def assert_nightly_submit(command: str) -> None:
    """``command`` submits jobs/nightly.py with submission id and --date from the same date."""
    assert re.search(r"ray job submit .*--submission-id nightly-\$\(date \+%F\)", command), command
    assert "-- python -m jobs.nightly" in command
    assert "--date $(date +%F)" in command
    assert "--working-dir ." in command
    assert re.search(r"--set results=/\S+", command), "results must be an absolute path under ray job submit"


def test_crontab_line_escapes_percent_and_submits_nightly():
    lines = [ln for ln in (SCHEDULE / "nightly.crontab").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#") and not re.match(r"^[A-Z_]+=", ln)]
    assert len(lines) == 1
    fields = lines[0].split(None, 5)
    assert all(re.fullmatch(CRON_FIELD, f) for f in fields[:5]), fields[:5]
    command = fields[5]
    assert not re.search(r"(?<!\\)%", command), "cron turns an unescaped % into a newline"
    assert_nightly_submit(command.replace("\\%", "%"))


def test_systemd_service_and_timer():
    service = systemd_sections(SCHEDULE / "alphaedit-nightly.service")
    timer = systemd_sections(SCHEDULE / "alphaedit-nightly.timer")
    assert service["Service"]["Type"] == ["oneshot"]
    [exec_start] = service["Service"]["ExecStart"]
    assert_nightly_submit(systemd_unescape(exec_start))
    assert timer["Timer"]["Unit"] == ["alphaedit-nightly.service"]
    assert timer["Timer"]["Persistent"] == ["true"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]
    [calendar] = timer["Timer"]["OnCalendar"]
    if shutil.which("systemd-analyze"):
        out = subprocess.run(["systemd-analyze", "calendar", calendar], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr


def load_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((SCHEDULE / name).read_text()) if d]


def check_rayjob_spec(spec: dict) -> None:
    assert "python -m jobs.nightly" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"].startswith("2.60")
    mounts = {m["mountPath"] for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]
              for m in c.get("volumeMounts", [])}
    results = re.search(r"--set results=(\S+)", spec["entrypoint"]).group(1)
    assert any(results.startswith(m + "/") for m in mounts), "the results file must be on a mounted volume"


def test_raycronjob_manifest():
    [doc] = load_docs("kuberay-raycronjob.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCronJob")
    assert len(doc["spec"]["schedule"].split()) == 5
    assert all(re.fullmatch(CRON_FIELD, f) for f in doc["spec"]["schedule"].split())
    check_rayjob_spec(doc["spec"]["jobTemplate"])


def test_cronjob_manifest_creates_one_date_named_rayjob_per_night():
    docs = {d["kind"]: d for d in load_docs("kuberay-cronjob.yaml")}
    assert set(docs) == {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"}
    cron = docs["CronJob"]
    assert cron["apiVersion"] == "batch/v1" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert all(re.fullmatch(CRON_FIELD, f) for f in cron["spec"]["schedule"].split())
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    script = pod["containers"][0]["command"][-1]
    assert "kubectl create -f -" in script, "create (not apply) so that an existing night is refused"
    assert "date -u +%F" in script and "__NIGHT__" in script
    assert "create" in docs["Role"]["rules"][0]["verbs"] and docs["Role"]["rules"][0]["resources"] == ["rayjobs"]
    # The RayJob template, filled in as the CronJob does it.
    template = docs["ConfigMap"]["data"]["rayjob.yaml"].replace("__NIGHT__", "2026-11-21")
    rayjob = yaml.safe_load(template)
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    assert rayjob["metadata"]["name"] == "alphaedit-nightly-2026-11-21"
    assert rayjob["spec"]["jobId"] == "nightly-2026-11-21"
    assert "--date 2026-11-21" in rayjob["spec"]["entrypoint"]
    check_rayjob_spec(rayjob["spec"])
    names = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    assert names == {docs["ConfigMap"]["metadata"]["name"]}


@pytest.mark.parametrize("name", ["nightly.crontab", "alphaedit-nightly.service", "alphaedit-nightly.timer",
                                  "kuberay-raycronjob.yaml", "kuberay-cronjob.yaml"])
def test_readme_explains_every_file(name):
    assert f"`{name}`" in (SCHEDULE / "README.md").read_text()
