"""The plugit command: refusals happen before any server starts."""

from __future__ import annotations

import pytest

from plugit_core.cli import main


@pytest.fixture
def dev_config(tmp_path):
    path = tmp_path / "dev.toml"
    path.write_text('dev_mode = true\n[[services]]\nname = "x"\nurl = "http://127.0.0.1:9"\n')
    return path


@pytest.mark.parametrize(
    "host", [pytest.param("0.0.0.0", id="any-v4"), pytest.param("::", id="any-v6")]
)
def test_dev_mode_refuses_a_public_address(dev_config, host, capsys):
    assert main(["proxy", "--config", str(dev_config), "--host", host]) == 2
    err = capsys.readouterr().err
    assert "dev mode" in err and "refusing to listen" in err and "--force" in err


def test_invalid_config_is_one_clear_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('secret_key = "x"\n')
    assert main(["proxy", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("plugit: error: secret_key: is too weak")
    assert "Traceback" not in err


def test_service_needs_a_module_or_check(capsys):
    assert main(["service"]) == 2
    assert "give a MODULE" in capsys.readouterr().err


def test_service_module_that_does_not_import(capsys):
    assert main(["service", "no_such_module_anywhere"]) == 2
    assert "cannot import no_such_module_anywhere" in capsys.readouterr().err
