"""Report integrity: every edit, deletion or addition is named; signatures hold only for the right key."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from faceaudit.cli import main
from faceaudit.errors import InputError
from faceaudit.report.integrity import MANIFEST, generate_key, sign_manifest, verify_folder, write_manifest


@pytest.fixture()
def report(tmp_path: Path) -> Path:
    folder = tmp_path / "report"
    (folder / "plots").mkdir(parents=True)
    (folder / "results.json").write_text('{"fmr": 0.001}\n')
    (folder / "summary.md").write_text("# Summary\n")
    (folder / "plots" / "det.png").write_bytes(bytes(range(256)))
    return folder


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, Path]:
    generate_key(tmp_path / "k.pem", tmp_path / "k.pub")
    return tmp_path / "k.pem", tmp_path / "k.pub"


def test_intact_signed_report_verifies(report: Path, keys: tuple[Path, Path]) -> None:
    write_manifest(report)
    sign_manifest(report, keys[0])
    res = verify_folder(report, keys[1])
    assert res.ok and res.signature == "valid"
    assert (report / MANIFEST).read_text().count("\n") == 3
    assert (keys[0].stat().st_mode & 0o777) == 0o600


def test_every_single_byte_edit_is_detected(report: Path) -> None:
    write_manifest(report)
    target = report / "plots" / "det.png"
    original = target.read_bytes()
    for pos in range(0, len(original), 17):
        edited = bytearray(original)
        edited[pos] ^= 0x01
        target.write_bytes(bytes(edited))
        assert verify_folder(report).changed == ["plots/det.png"]
    target.write_bytes(original)
    assert verify_folder(report).ok


def test_missing_extra_and_wrong_key(report: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    write_manifest(report)
    sign_manifest(report, keys[0])
    (report / "summary.md").unlink()
    (report / "new.txt").write_text("slipped in")
    res = verify_folder(report, keys[1])
    assert res.missing == ["summary.md"] and res.extra == ["new.txt"] and not res.ok
    generate_key(tmp_path / "other.pem", tmp_path / "other.pub")
    assert verify_folder(report, tmp_path / "other.pub").signature == "invalid"


def test_editing_the_manifest_breaks_the_signature(report: Path, keys: tuple[Path, Path]) -> None:
    write_manifest(report)
    sign_manifest(report, keys[0])
    (report / "results.json").write_text('{"fmr": 0.0001}\n')
    write_manifest(report)  # someone recomputes the manifest to hide the edit
    res = verify_folder(report, keys[1])
    assert res.changed == [] and res.signature == "invalid" and not res.ok
    (report / "MANIFEST.sig").unlink()
    assert verify_folder(report, keys[1]).signature == "absent"


def test_cli_keygen_sign_verify(report: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    priv, pub = tmp_path / "a.pem", tmp_path / "a.pub"
    assert runner.invoke(main, ["keygen", "--private", str(priv), "--public", str(pub)]).exit_code == 0
    assert runner.invoke(main, ["keygen", "--private", str(priv), "--public", str(pub)]).exit_code == 1
    assert runner.invoke(main, ["sign-report", str(report), "--key", str(priv)]).exit_code == 0
    ok = runner.invoke(main, ["verify-report", str(report), "--pubkey", str(pub)])
    assert ok.exit_code == 0 and "signature: valid" in ok.output
    (report / "summary.md").write_text("# Edited\n")
    bad = runner.invoke(main, ["verify-report", str(report), "--pubkey", str(pub)])
    assert bad.exit_code == 1 and "changed: summary.md" in bad.output


def test_not_a_report(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no MANIFEST\.sha256"):
        verify_folder(tmp_path)
