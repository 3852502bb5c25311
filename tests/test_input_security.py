"""Hostile input and hostile reports (issue 15): each test performs the attack on real files and shows it fail.

- Report integrity (finding 7): a re-hashed edit or a garbage signature is never called verified; signing
  cannot launder an edit.
- Audit input (finding 8): /dev/zero, a FIFO, a huge file as an image; FIFOs, million-column tables and
  gigabyte lines as manifests, label files, pair lists and score files; labels that are mathtext; a deeply
  nested config. Each is refused cleanly (or, for an image, left out with a reason while the batch goes on).
- Report text (finding 9): labels that are HTML or Markdown reach summary.md and report.html as text.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from faceaudit.audit.config import AuditConfig, DatasetConfig, GroupsConfig, MetricsConfig, RunConfig, UncertaintyConfig
from faceaudit.audit.run import run_audit
from faceaudit.cli import main
from faceaudit.errors import ImageError, InputError
from faceaudit.io.datasets import join_attributes, load_dataset
from faceaudit.io.files import MAX_COLUMNS, MAX_LINE_BYTES
from faceaudit.io.images import DEFAULT_MAX_FILE_BYTES, load_image, read_bytes, sha256_file
from faceaudit.io.lfw import read_pairs
from faceaudit.io.manifest import read_inputs, read_manifest
from faceaudit.io.pairlist import read_pair_list
from faceaudit.io.scores import iter_pairs, read_score_manifest
from faceaudit.report.integrity import MANIFEST, SIGNATURE, generate_key, sign_manifest, verify_folder, write_manifest
from faceaudit.report.summary import md_text, render_summary

needs_posix = pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(),
                                 reason="needs FIFOs and /dev/zero (POSIX)")

XSS = "<script>alert(1)</script>"
MATH = "$\\frac{$"  # mathtext that matplotlib's parser rejects
LINK = "[click](javascript:alert(1))"


def within(seconds: float, fn: Callable[[], Any], fifos: tuple[Path, ...] = ()) -> Any:
    """``fn()``, failing (not hanging) the test if it takes longer: a regression that opens a FIFO blocks for
    ever, so it runs in a daemon thread, and the FIFOs are then opened for writing to release it."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test below
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        for fifo in fifos:
            with contextlib.suppress(OSError):  # no reader blocked on it: nothing to release
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the blocked reader sees end of file
        pytest.fail(f"still running after {seconds} s: a FIFO or endless file was opened and read")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture()
def fifo(tmp_path: Path) -> Iterator[Path]:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    path = tmp_path / "pipe"
    os.mkfifo(path)
    yield path


def sparse(path: Path, size: int, head: bytes = b"") -> Path:
    """A file of ``size`` bytes that costs no disk: ``head`` then zeros (a hole)."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


# ---------------------------------------------------------------- finding 7: report integrity


@pytest.fixture()
def report(tmp_path: Path) -> Path:
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "results.json").write_text('{"fmr": 0.001}\n')
    (folder / "summary.md").write_text("# Summary\n")
    write_manifest(folder)
    return folder


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, Path]:
    generate_key(tmp_path / "k.pem", tmp_path / "k.pub")
    return tmp_path / "k.pem", tmp_path / "k.pub"


def _verify(folder: Path, *pubkey: Path) -> Any:
    args = ["verify-report", str(folder)] + (["--pubkey", str(pubkey[0])] if pubkey else [])
    return CliRunner().invoke(main, args)


def test_unsigned_report_is_integrity_only_and_a_rehashed_edit_is_not_called_authentic(report: Path) -> None:
    (report / "results.json").write_text('{"fmr": 0.1}\n')  # the attack: edit, then rewrite the manifest
    write_manifest(report)
    res = _verify(report)
    assert res.exit_code == 0, res.output  # nothing to tell an edit from the original without a signature...
    assert "OK (integrity only)" in res.output and "unsigned" in res.output  # ...and it says so plainly
    assert "match the manifest shipped with them" in res.output and "the report is intact" not in res.output
    assert verify_folder(report).signature == "unsigned"


def test_rehashed_edit_of_a_signed_report_fails_with_or_without_the_key(report: Path, keys: tuple[Path, Path]) -> None:
    sign_manifest(report, keys[0])
    (report / "results.json").write_text('{"fmr": 0.1}\n')
    write_manifest(report)  # hide the edit from the manifest; the signature cannot follow
    unchecked = _verify(report)
    assert unchecked.exit_code == 1 and "NOT VERIFIED" in unchecked.output and "--pubkey" in unchecked.output
    assert verify_folder(report).signature == "present, not checked" and not verify_folder(report).ok
    checked = _verify(report, keys[1])
    assert checked.exit_code == 1 and "signature: invalid" in checked.output and "FAILED" in checked.output


def test_garbage_signature_is_never_accepted(report: Path, keys: tuple[Path, Path]) -> None:
    (report / SIGNATURE).write_bytes(b"\x00garbage")
    assert _verify(report).exit_code == 1  # present but unchecked
    res = _verify(report, keys[1])
    assert res.exit_code == 1 and "signature: invalid" in res.output
    (report / SIGNATURE).unlink()
    absent = _verify(report, keys[1])
    assert absent.exit_code == 1 and "signature: absent" in absent.output  # a key was given: proof was expected


def test_a_valid_signature_verifies(report: Path, keys: tuple[Path, Path]) -> None:
    sign_manifest(report, keys[0])
    res = _verify(report, keys[1])
    assert res.exit_code == 0 and "signature: valid" in res.output and res.output.strip().splitlines()[-1].startswith(
        "OK: every file matches")


def test_sign_report_refuses_to_launder_an_edit(report: Path, keys: tuple[Path, Path]) -> None:
    sign_manifest(report, keys[0])
    manifest, signature = (report / MANIFEST).read_bytes(), (report / SIGNATURE).read_bytes()
    (report / "results.json").write_text('{"fmr": 0.1}\n')
    (report / "summary.md").unlink()
    (report / "extra.txt").write_text("slipped in")
    res = CliRunner().invoke(main, ["sign-report", str(report), "--key", str(keys[0])])
    assert res.exit_code == 1
    for line in ("refusing to sign", "changed: results.json", "missing: summary.md", "not in the manifest: extra.txt",
                 f"delete {MANIFEST}"):
        assert line in res.output, line
    assert (report / MANIFEST).read_bytes() == manifest and (report / SIGNATURE).read_bytes() == signature
    assert not verify_folder(report, keys[1]).ok  # the edit is still caught
    # the way to sign files one did mean to change: start a new manifest, knowingly
    (report / MANIFEST).unlink()
    again = CliRunner().invoke(main, ["sign-report", str(report), "--key", str(keys[0])])
    assert again.exit_code == 0 and "no MANIFEST.sha256 was there" in again.output
    assert "previous signature was replaced" in again.output and verify_folder(report, keys[1]).ok


def test_sign_report_on_a_new_folder_and_on_an_intact_report(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    first = CliRunner().invoke(main, ["sign-report", str(folder), "--key", str(keys[0])])
    assert first.exit_code == 0 and "wrote one over the 1 file(s) as they are now" in first.output
    second = CliRunner().invoke(main, ["sign-report", str(folder), "--key", str(keys[0])])
    assert second.exit_code == 0 and "checked: all 1 file(s) match" in second.output
    assert verify_folder(folder, keys[1]).ok


def test_keygen_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("keep me")
    (tmp_path / "k.pem").symlink_to(target)
    with pytest.raises(InputError, match="exists; refusing to overwrite"):
        generate_key(tmp_path / "k.pem", tmp_path / "k.pub")
    assert target.read_text() == "keep me" and not (tmp_path / "k.pub").exists()


def test_signing_never_writes_through_a_planted_link(report: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (report / SIGNATURE).symlink_to(victim)  # not in the manifest: the manifest skips MANIFEST.sig by name
    sign_manifest(report, keys[0])
    assert victim.read_text() == "keep me" and not (report / SIGNATURE).is_symlink()
    assert verify_folder(report, keys[1]).ok


def test_manifest_cannot_point_outside_the_folder(report: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_text("x")
    with open(report / MANIFEST, "a") as f:
        f.write(f"{sha256_file(outside)}  ../secret\n{'0' * 64}  /dev/zero\n")
    res = verify_folder(report)
    assert res.malformed == [f"{sha256_file(outside)}  ../secret", f"{'0' * 64}  /dev/zero"] and not res.ok


# ---------------------------------------------------------------- finding 8: images


@needs_posix
def test_dev_zero_fifo_and_huge_file_are_refused_as_images_without_reading(tmp_path: Path, fifo: Path) -> None:
    with pytest.raises(ImageError) as err:
        within(10, lambda: load_image("/dev/zero"))
    assert err.value.reason == "not_a_regular_file" and "character device" in str(err.value)
    with pytest.raises(ImageError) as err:
        within(10, lambda: read_bytes(fifo), (fifo,))
    assert err.value.reason == "not_a_regular_file" and "FIFO" in str(err.value)
    huge = sparse(tmp_path / "huge.jpg", DEFAULT_MAX_FILE_BYTES + 1, b"\xff\xd8\xff")
    with pytest.raises(ImageError) as err:
        within(10, lambda: load_image(huge))
    assert err.value.reason == "too_large" and f"{DEFAULT_MAX_FILE_BYTES:,}" in str(err.value)
    link = tmp_path / "zero.jpg"
    link.symlink_to("/dev/zero")  # a link to a device is no better
    with pytest.raises(ImageError) as err:
        load_image(link)
    assert err.value.reason == "not_a_regular_file"


@needs_posix
def test_fifo_in_a_subject_folder_is_reported_not_dropped(tmp_path: Path) -> None:
    (tmp_path / "alice").mkdir()
    os.mkfifo(tmp_path / "alice" / "1.jpg")
    table = read_inputs(tmp_path)
    assert table["path"].tolist() == ["alice/1.jpg"]  # listed, so the read fails with a reason in left_out.csv


# ---------------------------------------------------------------- finding 8: tables and configs

#: Every table reader, with the file name it wants and what its file must contain.
READERS: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "manifest": ("m.csv", read_manifest),
    "dataset": ("m.csv", lambda p: load_dataset(p)),
    "score manifest": ("ids.csv", read_score_manifest),
    "pairs file": ("pairs.csv", lambda p: list(iter_pairs(p, chunk_rows=1000))),
    "pair list": ("list.csv", read_pair_list),
    "pair list (text)": ("list.txt", read_pair_list),
    "attributes": ("labels.csv", lambda p: join_attributes(pd.DataFrame({"path": ["a"], "subject_id": ["1"]}), p, [])),
    "lfw pairs.txt": ("pairs.txt", read_pairs),
}
HEADER = b"path,subject_id,id,id_a,id_b,score,path_a,path_b,sex\n"


@needs_posix
@pytest.mark.parametrize("kind", list(READERS))
def test_table_inputs_refuse_fifos_and_devices(kind: str, tmp_path: Path) -> None:
    name, read = READERS[kind]
    path = tmp_path / name
    os.mkfifo(path)
    with pytest.raises(InputError, match="FIFO"):
        within(10, lambda: read(path), (path,))
    zero = tmp_path / "zero" / name
    zero.parent.mkdir()
    zero.symlink_to("/dev/zero")
    with pytest.raises(InputError, match="character device"):
        within(10, lambda: read(zero))


@pytest.mark.parametrize("kind", list(READERS))
def test_table_inputs_refuse_a_gigabyte_line(kind: str, tmp_path: Path) -> None:
    name, read = READERS[kind]
    path = sparse(tmp_path / name, 1 << 30, HEADER + b"x")  # line 2 runs on for a gigabyte (of zeros)
    # the pairs file's reader block is 1 MiB here (chunk_rows=1000), the same as the line limit of the others
    with pytest.raises(InputError, match=f"longer than {MAX_LINE_BYTES:,} bytes, the limit for"):
        within(30, lambda: read(path))


@pytest.mark.parametrize("kind", [k for k, (name, _) in READERS.items() if name.endswith(".csv")])
def test_csv_inputs_refuse_a_huge_quoted_cell_spread_over_short_lines(kind: str, tmp_path: Path) -> None:
    name, read = READERS[kind]
    path = tmp_path / name
    # every line is short, but the quotes make lines 2 to 1,500,001 one cell of 3 MB
    path.write_bytes(HEADER + b'"' + b"x\n" * 1_500_000 + b'",1,2,3,4,5,6,7,8\n')
    with pytest.raises(InputError, match=r"a record .* is longer than|cannot read the pairs file"):
        within(30, lambda: read(path))


@pytest.mark.parametrize("kind", list(READERS))
def test_table_inputs_refuse_a_million_columns(kind: str, tmp_path: Path) -> None:
    name, read = READERS[kind]
    path = tmp_path / name
    path.write_bytes(HEADER.rstrip(b"\n") + b"," + b",".join(b"c%d" % i for i in range(10**6)) + b"\n")
    with pytest.raises(InputError, match=r"longer than|columns, over the limit"):
        within(30, lambda: read(path))
    if name.endswith(".csv"):  # within the line limit, over the column limit
        path.write_bytes(HEADER.rstrip(b"\n") + b"," + b",".join(b"c%d" % i for i in range(MAX_COLUMNS)) + b"\n")
        with pytest.raises(InputError, match=f"over the limit of {MAX_COLUMNS:,}"):
            read(path)


MEMORY_PROBE = """
import resource, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from faceaudit.errors import InputError
from test_input_security import READERS
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for folder in sys.argv[2:]:
    for kind, (name, read) in READERS.items():
        try:
            read(Path(folder) / name)
        except InputError:
            pass
        else:
            raise SystemExit(f"{kind}: not refused")
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)  # MiB (Linux reports KiB)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB is Linux's")
def test_refusing_huge_tables_costs_little_memory(tmp_path: Path) -> None:
    """The attacks of the two tests above, measured: peak memory while every reader refuses them stays small
    (it was 5 to 8 GB), in a fresh process so that earlier tests' peaks do not hide it."""
    import subprocess

    wide, long = tmp_path / "wide", tmp_path / "long"
    for folder in (wide, long):
        folder.mkdir()
    for name, _ in READERS.values():
        (wide / name).write_bytes(HEADER.rstrip(b"\n") + b"," + b",".join(b"c%d" % i for i in range(10**6)) + b"\n")
        sparse(long / name, 1 << 30, HEADER + b"x")
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(Path(__file__).parent), str(wide), str(long)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    assert int(done.stdout.split()[-1]) < 200, done.stdout  # MiB above the imports


def test_parquet_with_too_many_columns_is_refused_from_its_footer(tmp_path: Path) -> None:
    table = pa.table({"path": ["a.jpg"], "subject_id": ["1"], **{f"c{i}": [0] for i in range(MAX_COLUMNS)}})
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(InputError, match="columns, over the limit"):
        read_manifest(tmp_path / "m.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1" + b"\x00" * 8 + (2**31).to_bytes(4, "little") + b"PAR1")
    with pytest.raises(InputError, match="Parquet metadata of 2,147,483,648 bytes"):
        read_score_manifest(tmp_path / "bad.parquet")


def test_ordinary_tables_still_read(tmp_path: Path) -> None:
    """The checks cost nothing to honest files: CRLF, a BOM, quoted commas, a long but legal line."""
    path = tmp_path / "m.csv"
    path.write_bytes(b"\xef\xbb\xbfpath,subject_id,note\r\na.jpg,1,\"x,\ny\"\r\nb.jpg,2," + b"z" * 100_000 + b"\r\n"
                     + b"c.jpg,3,5'11\"\r\n" + b"d.jpg,4,z\r\n" * 300_000)  # 5'11": a quote inside a cell
    df = read_manifest(path)
    assert df["path"].tolist()[:3] == ["a.jpg", "b.jpg", "c.jpg"] and len(df) == 300_003
    assert df["note"][0] == "x,\ny" and len(df["note"][1]) == 100_000 and df["note"][2] == "5'11\""
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("id_a,id_b,score\na,b,0.5\nb,c,0.25\n")
    chunks = list(iter_pairs(pairs, pd.Series(["a", "b", "c"])))
    assert np.concatenate([c.score for c in chunks]).tolist() == [0.5, 0.25]
    bad = tmp_path / "bad.csv"
    bad.write_text("id_a,id_b,score\na,b,0.5,7\n")
    with pytest.raises(InputError, match="cannot read the pairs file"):  # a pyarrow error, now a clear one
        list(iter_pairs(bad, pd.Series(["a", "b"])))


def test_config_nested_too_deeply_too_large_or_a_fifo(tmp_path: Path) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("title = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(InputError, match="nested too deeply"):
        AuditConfig.from_toml(deep)
    deep.write_text("[dataset]\npath = " + "{a = " * 5_000 + "1" + "}" * 5_000 + "\n")
    with pytest.raises(InputError, match="nested too deeply"):
        AuditConfig.from_toml(deep)
    big = sparse(tmp_path / "big.toml", 2 << 20, b"title = 'x'\n#")
    with pytest.raises(InputError, match="over the limit of"):
        AuditConfig.from_toml(big)
    res = CliRunner().invoke(main, ["audit", "--config", str(deep), "--out", str(tmp_path / "out")])
    assert res.exit_code == 1 and "nested too deeply" in res.output and "Traceback" not in res.output
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.toml")
        with pytest.raises(InputError, match="FIFO"):
            within(10, lambda: AuditConfig.from_toml(tmp_path / "pipe.toml"), (tmp_path / "pipe.toml",))


# ---------------------------------------------------------------- findings 8 and 9, end to end


@needs_posix
def test_audit_with_hostile_rows_and_labels_finishes_and_writes_them_as_text(
        tiny: pd.DataFrame, tmp_path: Path) -> None:
    """A manifest naming /dev/zero, a FIFO, a huge file and a missing file among good images, with labels
    that are HTML, mathtext and a Markdown link: the audit finishes, the bad rows are left out with their
    reasons, and every page shows the labels as text."""
    good = tiny.sort_values("subject_id", key=lambda s: s.astype(int)).head(30).reset_index(drop=True)
    tags = [XSS, MATH, LINK]
    rows = [{"path": f, "subject_id": s, "tag": tags[int(s) % 3]} for f, s in zip(good["file"], good["subject_id"],
                                                                                   strict=True)]
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    bad = {"/dev/zero": "not_a_regular_file", str(pipe): "not_a_regular_file",
           str(sparse(tmp_path / "huge.jpg", DEFAULT_MAX_FILE_BYTES + 1)): "too_large",
           str(tmp_path / "gone.jpg"): "missing_file"}
    rows += [{"path": p, "subject_id": f"bad{i}", "tag": XSS} for i, p in enumerate(bad)]
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    cfg = AuditConfig(
        title=f"Audit {XSS}", dataset=DatasetConfig(path=str(manifest), labels=LINK),
        groups=GroupsConfig(by=("tag",)), metrics=MetricsConfig(target_fmrs=(0.05,)),
        uncertainty=UncertaintyConfig(bootstrap=0, permutations=0), run=RunConfig(cache=False, workers=1))
    out = tmp_path / "report"
    within(300, lambda: run_audit(cfg, out, progress=False, echo=lambda m: None), (pipe,))

    left = pd.read_csv(out / "left_out.csv", dtype=str)
    reasons = dict(zip(left["path"], left["reason"], strict=True))
    assert {p: reasons.get(p) for p in bad} == bad  # each bad row, with its reason
    assert not set(reasons) & set(good["file"])  # and every good image went through

    md = (out / "summary.md").read_text()
    assert "<script" not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert not re.search(r"(?<!\\)\]\(javascript", md) and "\\[click\\]" in md
    assert "\\$\\\\frac{\\$" in md  # a literal "$\frac{$": no math, neither for matplotlib nor for GitHub
    html = (out / "report.html").read_text()
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert verify_folder(out).ok


def test_md_text_keeps_labels_inert() -> None:
    assert md_text("a|b") == "a\\|b"
    assert md_text("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert md_text("line\n# heading\r\n| x |") == "line # heading \\| x \\|"
    assert md_text(LINK) == "\\[click\\](javascript:alert(1))"
    assert md_text("`code` *em* _u_ \\") == "\\`code\\` \\*em\\* \\_u\\_ \\\\"
    assert md_text(MATH) == "\\$\\\\frac{\\$"
    assert md_text("&lt;") == "&amp;lt;"  # an entity written by the user stays text


def _results(groups: list[str]) -> dict[str, Any]:
    """A minimal results document with these group labels (two attributes' worth of text in each)."""
    og = [{"group": g, "values": {"tag": g}, "fmr": 0.002, "fmr_ci": None, "fmr_vs_target": 2.0, "fnmr": 0.01,
           "fnmr_ci": None, "false_matches": 20, "impostor_pairs": 10_000, "false_non_matches": 1,
           "genuine_pairs": 100} for g in groups]
    return {
        "settings": {"impostor_pairs": "all", "scores": "cosine"},
        "audit": {"title": XSS, "dataset": {"name": LINK, "labels": "<b>x</b>", "min_subjects": 1},
                  "system": {"name": "Vendor | X", "kind": "engine"}},
        "analyses": [{"attributes": ["<i>tag</i>"], "groups": [{"group": g, "values": {"tag": g}} for g in groups],
                      "counts": [{"group": g, "subjects": 50, "images": 100, "impostor_pairs": 10_000,
                                  "genuine_pairs": 100, "failed_to_enrol": 0} for g in groups],
                      "operating_points": [{"target_fmr": 1e-3, "threshold": 0.4, "threshold_exact": True,
                                            "fmr": 0.002, "fnmr": 0.01, "groups": og}]}],
    }


def test_summary_escapes_every_label_it_quotes() -> None:
    md = render_summary(_results([f"tag={XSS}", "tag=a|b\n| forged | row |"]),
                        {"faceaudit_version": "0", "seed": 0, "engine": {"models": [{"role": "<x>", "file": "f|g",
                                                                                     "sha256": "0"}]},
                         "files": {"manifest": {"path": "/data/<evil>.csv", "sha256": "1"}}})
    assert "<script" not in md and "<b>" not in md and "<i>" not in md and "<evil>" not in md
    assert not re.search(r"(?<!\\)\]\(javascript", md) and "Vendor \\| X" in md
    table = [line for line in md.splitlines() if line.startswith("| tag=")]
    assert len(table) == 2 and all(len(re.findall(r"(?<!\\)\|", line)) == 6 for line in table)  # five cells each
    assert not any(line.startswith("| forged") for line in md.splitlines())


def test_comparison_summary_and_plots_escape_labels_and_engine_names() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from faceaudit.comparison import EngineRun, compare_frames
    from faceaudit.report.comparison import differences_plot, rates_side_by_side, render_comparison_summary
    from test_comparison import _frame, _population

    subj, group, ea, eb, _ = _population(4, 40)
    tag = np.where(group == 0, XSS, MATH)
    ok = np.ones(len(subj), bool)
    names = ["<b>A</b>", LINK]
    res = compare_frames([EngineRun(names[0], _frame(ea, subj, tag, ok), {}),
                          EngineRun(names[1], _frame(eb, subj, tag, ok), {})],
                         [["sex"]], target_fmrs=[0.05], bootstrap=20, permutations=0)
    doc = res.to_dict()
    results = {**doc, "engines": [{"name": n, "title": "<i>t</i>", "failed_to_enrol": 0, "protocol": None}
                                  for n in names],
               "audit": {"title": XSS, "dataset": {"name": LINK, "images": len(subj), "subjects": 40,
                                                    "enrolled_by_all": len(subj), "labels": "<u>x</u>"}},
               "limitations": [{"kind": "x", "text": f"group sex={XSS} is small"}]}
    md = render_comparison_summary(results, {"faceaudit_version": "0", "seed": 0})
    assert "<script" not in md and "<b>" not in md and "<i>" not in md and "<u>" not in md
    assert not re.search(r"(?<!\\)\]\(javascript", md) and "&lt;script&gt;" in md
    a = doc["analyses"][0]
    assert rates_side_by_side(a, 0, names).startswith(b"\x89PNG")  # MATH as a label: drawn, not parsed
    assert differences_plot(a, 0, a["operating_points"][0]["differences"][0]).startswith(b"\x89PNG")
