"""Tests of the ``invcalc label`` command on a tiny input."""

from __future__ import annotations

import pytest

pytest.importorskip("rdkit")
pytest.importorskip("tblite")

from invcalc.cli import build_parser, main  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_omp_thread")

TINY_ARGS = [
    "--conformers", "1", "--relax-frames", "1", "--temperatures", "400", "--md-frames", "1",
    "--md-interval", "5", "--normal-modes", "1", "--rattles", "1",
    "--clusters", "1", "--cluster-sizes", "2", "2", "--cluster-frames", "1", "--no-progress",
]


@pytest.fixture
def smiles_file(tmp_path):
    path = tmp_path / "tiny.smi"
    path.write_text("# tiny list\nO water solvent train\nC#N hydrogen_cyanide small test\n")
    return path


def test_parser_has_label_subcommand():
    parser = build_parser()
    args = parser.parse_args(["label"])
    assert args.command == "label" and args.split == "train" and args.workers == 1
    with pytest.raises(SystemExit):
        parser.parse_args([])  # a subcommand is required
    with pytest.raises(SystemExit):
        parser.parse_args(["label", "--split", "validation"])


def test_label_tiny_list_and_resume(smiles_file, tmp_path, capsys):
    from invcalc.data.store import read_dataset, read_journal

    out = tmp_path / "out" / "tiny.extxyz"
    argv = ["label", "--smiles", str(smiles_file), "--split", "all", "-o", str(out), "--workers", "0", *TINY_ARGS]
    assert main(argv) == 0
    report = capsys.readouterr().out
    assert "4 tasks run, 0 already done" in report
    structures = read_dataset(out)
    names = {a.info["name"] for a in structures}
    assert {"water", "hydrogen_cyanide", "cluster_water_train_0000", "cluster_water_test_0000"} == names
    assert {a.info["split"] for a in structures if a.info["name"] == "hydrogen_cyanide"} == {"test"}
    for a in structures:
        assert a.get_forces().shape == (len(a), 3)
    size = out.stat().st_size

    assert main(argv) == 0  # rerun: everything already done
    assert "0 tasks run, 4 already done" in capsys.readouterr().out
    assert out.stat().st_size == size and len(read_journal(out)) == 4


def test_label_split_and_worker_process(smiles_file, tmp_path, capsys):
    from invcalc.data.store import read_dataset

    out = tmp_path / "test.extxyz"
    argv = ["label", "--smiles", str(smiles_file), "--split", "test", "-o", str(out), "--workers", "1",
            *TINY_ARGS, "--clusters", "0"]
    assert main(argv) == 0
    assert "1 tasks run" in capsys.readouterr().out
    assert {a.info["name"] for a in read_dataset(out)} == {"hydrogen_cyanide"}


def test_label_reports_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.smi"
    bad.write_text("[NH4+] ammonium small train\n")
    assert main(["label", "--smiles", str(bad), "--split", "all", "-o", str(tmp_path / "x.extxyz"),
                 "--no-progress"]) == 2
    assert "formal charges" in capsys.readouterr().err
