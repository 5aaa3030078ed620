"""The Packer runner: the only code that starts the ``packer`` binary.

Written for Debian's packer 1.6.6 (no ``packer init``, no plugins to install). ``validate`` runs
``packer validate``; ``build`` runs ``packer build -machine-readable``, turns each output line into a
``PackerEvent`` for a callback (progress and logs), and enforces a timeout and cooperative
cancellation by terminating packer's whole process group (packer and the provisioner's children),
first politely (SIGTERM, packer cancels its build), then with SIGKILL. ``parse_manifest`` reads the
manifest post-processor's JSON.

Errors: packer not installed -> ToolMissing (names the Debian package); a bad variable value ->
ReleaseInputError; any other validate/build failure, a timeout or a cancellation -> PackerError.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.errors import PackerError, ReleaseInputError, ToolMissing

COMMA = "%!(PACKER_COMMA)"
KILL_GRACE_S = 10.0
# Lines of `packer validate` output that mean "your variable values are wrong", not "the template is".
_VARIABLE_ERROR_MARKERS = ("Invalid value for", "Unset variable", "Undefined variable",
                           "Variables not allowed", "Invalid variable value")


@dataclass(frozen=True, slots=True)
class PackerEvent:
    """One ``-machine-readable`` line: ``timestamp,target,type,data...``."""

    timestamp: int
    target: str
    type: str
    data: tuple[str, ...]

    @property
    def text(self) -> str:
        """Human text of a ui event (``ui,say,...``), else the data joined by commas."""
        if self.type == "ui" and len(self.data) >= 2:
            return ",".join(self.data[1:])
        return ",".join(self.data)

    @property
    def is_error(self) -> bool:
        return self.type == "error" or (self.type == "ui" and bool(self.data) and self.data[0] == "error")


def parse_machine_line(line: str) -> PackerEvent | None:
    """Parse one machine-readable line; None for lines that are not (packer sometimes prints plain text)."""
    parts = line.rstrip("\r\n").split(",")
    if len(parts) < 3 or not parts[0].isdigit():
        return None
    data = tuple(p.replace(COMMA, ",").replace("\\n", "\n").replace("\\r", "\r") for p in parts[3:])
    return PackerEvent(timestamp=int(parts[0]), target=parts[1], type=parts[2], data=data)


@dataclass(frozen=True, slots=True)
class ManifestBuild:
    """One build entry of the manifest post-processor's output."""

    name: str
    builder_type: str
    files: tuple[tuple[str, int], ...]
    packer_run_uuid: str
    custom_data: Mapping[str, str] = field(default_factory=dict)


def parse_manifest(path: Path, run_uuid: str | None = None) -> ManifestBuild:
    """The build of the last run (or of ``run_uuid``) in a packer manifest file."""
    try:
        doc: Any = json.loads(path.read_text())
        uuid = run_uuid or doc["last_run_uuid"]
        builds = [b for b in doc["builds"] if b.get("packer_run_uuid") == uuid]
        if not builds:
            raise PackerError(f"packer manifest {path} has no build for run {uuid}")
        b = builds[-1]
        return ManifestBuild(name=str(b["name"]), builder_type=str(b["builder_type"]),
                             files=tuple((str(f["name"]), int(f["size"])) for f in b.get("files", [])),
                             packer_run_uuid=str(uuid),
                             custom_data={str(k): str(v) for k, v in (b.get("custom_data") or {}).items()})
    except FileNotFoundError as e:
        raise PackerError(f"packer wrote no manifest at {path}: is the manifest post-processor in the template?") from e
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:  # any shape: a dict, a list, ...
        raise PackerError(f"packer manifest {path} is malformed: {e!r}") from e


def find_packer(binary: str = "packer") -> str:
    """The packer executable's path, or ToolMissing naming the Debian package."""
    path = shutil.which(binary)
    if path is None:
        raise ToolMissing(f"packer ({binary!r}) is not installed or not on PATH: install the Debian package "
                          "`packer` (apt-get install packer; `make setup` does it)")
    return path


def packer_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["CHECKPOINT_DISABLE"] = "1"  # no version check against the internet
    env.setdefault("PACKER_NO_COLOR", "1")
    if extra:
        env.update(extra)
    return env


def _var_args(var_file: Path | None) -> list[str]:
    return [f"-var-file={var_file}"] if var_file else []


def validate(template_dir: Path, var_file: Path | None, *, packer: str = "packer", timeout: float = 120.0) -> None:
    """``packer validate``: ReleaseInputError for bad variable values, PackerError for a bad template."""
    exe = find_packer(packer)
    cmd = [exe, "validate", *_var_args(var_file), str(template_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=packer_env(),
                              cwd=template_dir, check=False)
    except subprocess.TimeoutExpired as e:
        raise PackerError(f"packer validate of {template_dir} timed out after {timeout:.0f} s") from e
    if proc.returncode == 0:
        return
    output = (proc.stdout + proc.stderr).strip()
    if any(m in output for m in _VARIABLE_ERROR_MARKERS):
        raise ReleaseInputError(f"packer rejected the variables for {template_dir}:\n{output}")
    raise PackerError(f"packer validate: template {template_dir} is invalid:\n{output}")


@dataclass(frozen=True, slots=True)
class BuildRun:
    """What ``build`` observed: every event, the artifact files packer announced, the wall time."""

    events: tuple[PackerEvent, ...]
    artifact_files: tuple[str, ...]
    seconds: float


def _kill_group(proc: subprocess.Popen[str], grace: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # packer is gone; sweep anything of its group that ignored SIGTERM (a provisioner's children).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def build(template_dir: Path, var_file: Path | None, *, packer: str = "packer", timeout: float = 600.0,
          on_event: Callable[[PackerEvent], None] | None = None, cancel: threading.Event | None = None,
          extra_args: Sequence[str] = (), kill_grace: float = KILL_GRACE_S) -> BuildRun:
    """``packer build -machine-readable``; raises PackerError on failure, timeout or cancellation."""
    exe = find_packer(packer)
    cmd = [exe, "build", "-machine-readable", "-color=false", *extra_args, *_var_args(var_file), str(template_dir)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=packer_env(),
                            cwd=template_dir, start_new_session=True)  # own process group: killpg reaches all
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for ln in proc.stdout:
            lines.put(ln)
        lines.put(None)

    reader = threading.Thread(target=pump, name="packer-output", daemon=True)
    reader.start()
    events: list[PackerEvent] = []
    plain: list[str] = []
    stopped: str | None = None
    try:
        while True:
            if cancel is not None and cancel.is_set():
                stopped = "cancelled"
                break
            remaining = timeout - (time.monotonic() - t0)
            if remaining <= 0:
                stopped = f"timed out after {timeout:.0f} s"
                break
            try:
                ln = lines.get(timeout=min(0.2, remaining))
            except queue.Empty:
                continue
            if ln is None:
                break
            ev = parse_machine_line(ln)
            if ev is None:
                if ln.strip():
                    plain.append(ln.rstrip())
                continue
            events.append(ev)
            if on_event is not None:
                on_event(ev)
    finally:
        _kill_group(proc, kill_grace)
        reader.join(timeout=5)
    rc = proc.wait()
    seconds = time.monotonic() - t0
    if stopped:
        raise PackerError(f"packer build of {template_dir} {stopped}; its process group was terminated")
    if rc != 0 or any(e.is_error for e in events):
        errors = [e.text.strip() for e in events if e.is_error] + plain
        raise PackerError(f"packer build of {template_dir} failed (exit {rc}):\n" + "\n".join(errors[-20:]))
    files = tuple(e.data[3] for e in events
                  if e.type == "artifact" and len(e.data) >= 4 and e.data[1] == "file")
    return BuildRun(events=tuple(events), artifact_files=files, seconds=seconds)
