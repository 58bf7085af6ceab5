"""Settings: the environment names, defaults, and clear failures for invalid values."""

from __future__ import annotations

import pytest

from service.server.app import create_app
from service.server.settings import Settings, SettingsError, load_settings, parse_devices


def test_defaults_and_env_prefix(monkeypatch):
    s = load_settings()
    assert (s.max_batch, s.max_batch_delay_ms, s.devices, s.api_key) == (16, 2.0, "auto", None)
    monkeypatch.setenv("ROICONV_MAX_BATCH", "4")
    monkeypatch.setenv("ROICONV_API_KEY", "s3cret")
    s = load_settings()
    assert s.max_batch == 4 and s.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.public())


def test_documented_settings_exist_and_are_described():
    names = set(Settings.model_fields)
    documented = {
        "devices", "workers_per_device", "max_batch", "max_batch_delay_ms", "max_queue", "request_timeout_s",
        "max_body_bytes", "max_pixels", "drain_timeout_s", "api_key", "models_dir",
    }  # fmt: skip
    assert documented <= names
    assert all(f.description for f in Settings.model_fields.values())


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("ROICONV_MAX_BATCH", "0", "ROICONV_MAX_BATCH"),
        ("ROICONV_DEVICES", "gpu", "unknown device 'gpu'"),
        ("ROICONV_MODELS_DIR", "/no/such/dir", "existing folder"),
        ("ROICONV_REQUEST_TIMEOUT_S", "-1", "ROICONV_REQUEST_TIMEOUT_S"),
        ("ROICONV_MAX_QUEUE", "many", "ROICONV_MAX_QUEUE"),
    ],
)
def test_invalid_settings_stop_startup(monkeypatch, var, value, needle):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=needle):
        create_app()


def test_unavailable_cuda_device_is_refused():
    with pytest.raises(SettingsError, match="cuda:7 is not available"):
        create_app(Settings(devices="cuda:7"))


def test_parse_devices():
    assert parse_devices("auto", 0) == ["cpu"]
    assert parse_devices("auto", 2) == ["cuda:0", "cuda:1"]
    assert parse_devices("cuda:0, cuda:1", 2) == ["cuda:0", "cuda:1"]
    with pytest.raises(ValueError, match="twice"):
        parse_devices("cpu,cpu", 0)


def test_cli_reports_bad_settings(monkeypatch, capsys):
    from service.cli import main

    monkeypatch.setenv("ROICONV_MAX_BATCH_DELAY_MS", "-5")
    assert main(["serve", "--port", "1"]) == 2
    assert "ROICONV_MAX_BATCH_DELAY_MS" in capsys.readouterr().err
