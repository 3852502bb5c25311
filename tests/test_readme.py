"""Every command block of the README runs, as written, on the bundled faces in a temporary folder.

The ``sh`` blocks are run line by line by bash (continuations joined), with this venv's ``faceaudit``
first on PATH; a line ending in ``&`` (``faceaudit serve``) runs in the background until the end, the
test waiting for its ``/readyz``; ``curl`` lines run as written (``-f``: an HTTP error fails them). The
``python`` blocks run as one program each, all in one working folder that
holds the files the README names (``faces.csv``, ``a.jpg``, ``audit.toml``, ...), made from the bundled
London crops. A non-zero exit or a traceback fails the test, naming the line. ``text`` blocks are
synopses (``[optional]`` parts, ``DIR`` placeholders): each ``faceaudit`` line there is checked for
options the command does not have. Not run, and why: ``make`` (the test is run by ``make test``) and
the ``dask`` servers (started here as a local cluster whose address replaces ``tcp://HOST:8786``).
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import click
import httpx
import numpy as np
import pandas as pd
import pytest

from faceaudit.cli import main
from faceaudit.demo import bundled_manifest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FACEAUDIT = Path(sys.executable).with_name("faceaudit")
HOST = "tcp://HOST:8786"
NOT_RUN = {"make": "the README's make targets run this test", "dask": "a server; a local cluster stands in"}


def blocks(*kinds: str) -> list[tuple[int, str, str]]:
    """(line number, kind, text) of every fenced block of these kinds in the README, in order."""
    out, lines = [], README.read_text().splitlines()
    start, kind, body = None, "", []
    for i, line in enumerate(lines, 1):
        fence = line.strip()
        if start is None and fence.startswith("```") and fence[3:] in kinds:
            start, kind, body = i, fence[3:], []
        elif start is None and fence.startswith("```"):
            start, kind, body = i, "", []
        elif start is not None and fence == "```":
            if kind:
                out.append((start, kind, "\n".join(body)))
            start = None
        elif start is not None:
            body.append(line)
    return out


def commands(text: str) -> Iterator[str]:
    """Each command line of a shell block, continuations joined (comments are left to bash)."""
    for line in text.replace("\\\n", " ").splitlines():
        if shlex.split(line, comments=True):
            yield line.strip()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with every file the README's commands name, made from the bundled faces."""
    ws = tmp_path_factory.mktemp("readme")
    manifest = bundled_manifest()
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    shutil.copytree(manifest.parent / "images", ws / "images")  # inside the folder: the service's data root
    table.to_csv(ws / "faces.csv", index=False)  # paths relative to it, as in the bundled manifest
    table["path"] = [str(ws / p) for p in table["path"]]
    first, second = table.loc[table["subject_id"] == table["subject_id"].iloc[0], "path"].iloc[:2]  # one person
    for name, src in {"photo.jpg": first, "group.jpg": first, "me.jpg": first, "x.jpg": first, "a.jpg": first,
                      "b.jpg": second, "a1.jpg": first, "a2.jpg": second, "probe.jpg": second}.items():
        shutil.copy(src, ws / name)
    for _, row in table.head(20).iterrows():  # a folder per subject
        (ws / "photos" / row["subject_id"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(row["path"], ws / "photos" / row["subject_id"] / Path(row["path"]).name)
    shutil.copy(ROOT / "examples" / "audit.toml", ws / "audit.toml")
    (ws / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "gallery-policy.toml", ws / "examples" / "gallery-policy.toml")
    # another system's outputs: its score file, and its vectors (here the default engine's, unnormalised)
    import faceaudit

    run = faceaudit.embed(ws / "faces.csv", ws / "faces.parquet", workers=1, cache=str(ws / "cache.sqlite"))
    emb = np.stack(run.frame["embedding"].to_list())
    ids = [f"img{i:03d}" for i in range(len(table))]
    pd.DataFrame({"id": ids, "subject_id": table["subject_id"], "sex": table["sex"],
                  "race": table["race"]}).to_csv(ws / "ids.csv", index=False)
    i, j = np.triu_indices(len(ids), k=1)
    pd.DataFrame({"id_a": np.array(ids)[i], "id_b": np.array(ids)[j],
                  "score": np.einsum("ij,ij->i", emb[i], emb[j])}).to_csv(ws / "vendor_scores.csv", index=False)
    pd.DataFrame({"id": ids, "subject_id": table["subject_id"], "sex": table["sex"],
                  "vector": list(emb * 3.0)}).to_parquet(ws / "vendor.parquet")
    return ws


@pytest.fixture(scope="module")
def cluster_address() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield str(cluster.scheduler_address)


def _env(ws: Path) -> dict[str, str]:
    """The user's shell: this venv's commands first on PATH; a private cache."""
    return {**os.environ, "PATH": f"{FACEAUDIT.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "FACEAUDIT_CACHE_DIR": str(ws / "cache"), "PYTHONUNBUFFERED": "1"}


def _run(argv: list[str], ws: Path, where: str) -> None:
    done = subprocess.run(argv, cwd=ws, env=_env(ws), capture_output=True, text=True, timeout=600, check=False)
    said = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in said, f"{where}: {shlex.join(argv)} exited " \
        f"{done.returncode}:\n{said[-3000:]}"


def _start(line: str, ws: Path, where: str) -> subprocess.Popen[bytes]:
    """A command the README runs in the background (``... &``): a server; wait until it is ready."""
    port = re.search(r"--port (\d+)", line)
    assert port, f"{where}: a background command needs --port so the test can wait for it: {line}"
    proc = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=ws, env=_env(ws), stdout=subprocess.DEVNULL,
                            stderr=open(ws / "server.log", "ab"), start_new_session=True)  # noqa: SIM115
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{where}: {line} exited {proc.returncode}: "
                                 f"{(ws / 'server.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port.group(1)}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{where}: {line} was not ready in 120 s")


def test_every_command_block_of_the_readme_runs_in_order(workspace: Path, cluster_address: str) -> None:
    """As a reader would: top to bottom, each file a command makes there for the commands after it."""
    ran, background = 0, []
    try:
        for start, kind, text in blocks("sh", "python"):
            where = f"README {kind} block at line {start}"
            if kind == "python":
                _run([sys.executable, "-c", text], workspace, where)
                ran += 1
                continue
            for line in commands(text):
                first = shlex.split(line, comments=True)[0]
                if first in NOT_RUN:
                    continue
                assert first in ("faceaudit", "curl"), f"{where}: unexpected command {first!r}"
                if first == "curl" and shutil.which("curl") is None:
                    warnings.warn(f"{where}: curl is not installed; not run: {line}", stacklevel=1)
                    continue
                line = line.replace(HOST, cluster_address)
                if line.endswith("&"):
                    background.append(_start(line[:-1].strip(), workspace, where))
                else:
                    _run(["bash", "-c", line], workspace, where)
                ran += 1
    finally:
        for proc in background:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
    assert ran >= 40  # the audit, comparison, gallery, service and cluster commands, and the Python blocks
    with tarfile.open(workspace / "report.tar.gz") as tar:  # the audit job's report, as the README downloads it
        names = {Path(n).name for n in tar.getnames()}
    assert {"report.html", "results.json", "MANIFEST.sha256"} <= names


def test_the_gallery_verify_command_works_on_a_freshly_enrolled_subject(workspace: Path, tmp_path: Path) -> None:
    """Regression: `gallery verify` with an image crashed (the probe was the embedder's whole return value)."""
    key, folder = str(tmp_path / "k.key"), str(tmp_path / "g")
    for argv in (["gallery", "keygen", key], ["gallery", "init", folder, "--key", key],
                 ["gallery", "enrol", folder, "bob", str(workspace / "a1.jpg"), "--key", key, "--consent-by", "Bob",
                  "--consent-date", "2026-11-01", "--legal-basis", "consent"]):
        _run([str(FACEAUDIT), *argv], workspace, "setup")
    done = subprocess.run([str(FACEAUDIT), "gallery", "verify", folder, "bob", str(workspace / "a2.jpg"), "--key", key],
                          cwd=workspace, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "FACEAUDIT_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "match" in done.stdout.lower()
    other = subprocess.run([str(FACEAUDIT), "gallery", "verify", folder, "bob",
                            str(bundled_manifest().parent / "images" / "002_03.jpg"), "--key", key],
                           cwd=workspace, capture_output=True, text=True, timeout=300, check=False)
    assert "Traceback" not in other.stderr and other.stdout != done.stdout  # another person: another answer


def test_synopsis_options_exist() -> None:
    """Every --option a synopsis line gives belongs to its command (renamed flags cannot linger)."""
    checked = 0
    for _, _, text in blocks("text"):
        for line in text.replace("\\\n", " ").splitlines():
            words = line.split("#")[0].split()
            if not words or words[0] != "faceaudit":
                continue
            cmd: click.Command = main
            ctx_words = [w for w in words[1:] if re.fullmatch(r"[a-z][a-z-]*", w)]
            for w in ctx_words:
                if isinstance(cmd, click.Group) and w in cmd.commands:
                    cmd = cmd.commands[w]
                else:
                    break
            known = set(itertools.chain.from_iterable(p.opts + p.secondary_opts for p in cmd.params))
            for opt in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", line.split("#")[0]):
                assert opt in known, f"README synopsis `{line.strip()}`: {cmd.name} has no option {opt}"
                checked += 1
    assert checked >= 30
