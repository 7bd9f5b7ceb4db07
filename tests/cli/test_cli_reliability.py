"""Clear errors instead of tracebacks through the CLI: exit 2, a message naming the problem, no traceback."""

import pytest

from polycom.cli import main


def fails(capsys, argv, *needles):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "-inf"])
def test_generate_temperature_is_validated_before_loading(tmp_path, capsys, value):
    # the run folder does not exist: the temperature is refused first, before any loading
    fails(capsys, ["generate", "--run", str(tmp_path / "nope"), f"--temperature={value}"], "--temperature must be")


def test_generate_negative_top_k_is_refused(tmp_path, capsys):
    fails(capsys, ["generate", "--run", str(tmp_path), "--top-k=-3"], "--top-k must be >= 0")


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_train_non_finite_lr_is_refused_before_anything_is_written(tmp_path, capsys, value):
    fails(capsys, ["train", f"--optim.lr={value}", "--out", str(tmp_path / "r")], "optim.lr must be a finite number")
    assert not (tmp_path / "r").exists()


def test_data_prepare_non_utf8_text_and_errors_replace(tmp_path, capsys):
    src = tmp_path / "latin1.txt"
    src.write_bytes(("abc " * 100 + "\ncaf\xe9\n").encode("latin-1"))
    fails(
        capsys,
        ["data", "prepare", "--source", str(src), "--out", str(tmp_path / "d")],
        f"{src}:2: not valid UTF-8",
        "--errors replace",
    )
    assert main(["data", "prepare", "--source", str(src), "--out", str(tmp_path / "d"), "--errors", "replace"]) == 0
