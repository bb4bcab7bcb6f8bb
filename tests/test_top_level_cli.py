"""The top-level `nanoserve` command: a user's bad input is one line on stderr, not a traceback."""

from nanoserve.cli import main


def test_bench_with_a_model_folder_lacking_config_is_one_line(tmp_path, capsys):
    rc = main(["bench", "throughput", "--model", str(tmp_path), "--num-prompts", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("nanoserve bench: error: --model") and "no config.json" in err
    assert "Traceback" not in err


def test_unknown_command_is_refused():
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
