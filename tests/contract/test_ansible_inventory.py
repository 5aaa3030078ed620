"""The Ansible export, read by the real `ansible-inventory` and used through ansible-runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ansible_runner
import pytest

from tests.helpers import SAMPLE_INVENTORY, VENV_BIN


@pytest.fixture
def inventory_script(tmp_path: Path) -> Path:
    script = tmp_path / "edgefleet-inventory"
    script.write_text(
        "#!/bin/sh\n"
        f'exec "{sys.executable}" -m edgefleet.cli inventory ansible -i "{SAMPLE_INVENTORY}" "$@"\n'
    )
    script.chmod(0o755)
    return script


def _ansible_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"), "ANSIBLE_HOME": str(tmp_path / "ah"),
            "ANSIBLE_INVENTORY_ENABLED": "script", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}


def test_ansible_inventory_reads_the_export(inventory_script: Path, tmp_path: Path) -> None:
    r = subprocess.run([str(VENV_BIN / "ansible-inventory"), "-i", str(inventory_script), "--list"],
                       capture_output=True, text=True, timeout=120, env=_ansible_env(tmp_path))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert len(data["_meta"]["hostvars"]) == 57  # the sample fleet's nodes
    assert data["store_dk_002"]["hosts"] == ["dk-002-n1", "dk-002-n2", "dk-002-n3"]
    assert "store_dk_002" in data["country_dk"]["children"]
    assert "store_dk_002" in data["ring_canary"]["children"]
    assert set(data["worker"]["hosts"]) == {"us-003-w1", "us-003-w2"}
    hv = data["_meta"]["hostvars"]["us-001-n1"]
    assert hv["edgefleet_store"] == "us-001" and hv["ansible_host"] == "10.24.1.11"
    # group vars of the store group reach the hosts
    assert hv["edgefleet_timezone"] == "America/New_York"
    # an IPv6-only store's hosts are reached at their IPv6 address
    assert data["_meta"]["hostvars"]["vn-002-n1"]["ansible_host"] == "fd00:27:2::11"
    r = subprocess.run([str(VENV_BIN / "ansible-inventory"), "-i", str(inventory_script), "--graph", "country_ae"],
                       capture_output=True, text=True, timeout=120, env=_ansible_env(tmp_path))
    assert "ae-002-n1" in r.stdout


def test_ansible_runner_plays_against_a_store_group(inventory_script: Path, tmp_path: Path) -> None:
    pdd = tmp_path / "runner"
    (pdd / "project").mkdir(parents=True)
    (pdd / "project" / "hook.yml").write_text(
        "- hosts: store_de_001\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - assert:\n"
        "        that:\n"
        "          - edgefleet_store == 'de-001'\n"
        "          - edgefleet_role == 'controlplane'\n"
        "          - edgefleet_timezone == 'Europe/Berlin'\n"
    )
    env = _ansible_env(tmp_path)
    r = ansible_runner.run(private_data_dir=str(pdd), playbook="hook.yml", inventory=str(inventory_script),
                           quiet=True, envvars={k: env[k] for k in ("ANSIBLE_LOCAL_TEMP", "ANSIBLE_HOME", "PATH")},
                           timeout=120)
    assert r.status == "successful", r.stdout.read()
    assert set(r.stats["ok"]) == {"de-001-n1", "de-001-n2", "de-001-n3"}
