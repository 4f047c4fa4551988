"""``python -m gate`` start-up: ``--help`` needs no settings, and a bad or missing GATE_*
variable is one line naming it and the form it takes, for every field."""

from __future__ import annotations

import os
from typing import get_origin

import pytest

from gate import __main__ as gate_main
from gate.settings import GateSettings, SettingsProblem, env_name, load_settings

TOKEN = "t" * 20


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("GATE_"):
            monkeypatch.delenv(name)


def problem_with(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsProblem) as raised:
        load_settings()
    return str(raised.value)


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"GATE_API_TOKEN": TOKEN, "GATE_WEBHOOK_URLS": "https://hooks.example/x"},
            "error: GATE_WEBHOOK_URLS: expected a JSON list of strings, "
            'e.g. ["https://hooks.slack.com/services/..."]',
        ),
        (
            {"GATE_API_TOKEN": TOKEN, "GATE_PORT": "abc"},
            "error: GATE_PORT: expected an integer from 0 to 65535, got 'abc'",
        ),
        (
            {},
            "error: GATE_API_TOKEN: not set; expected a string of at least 16 characters",
        ),
        (
            {"GATE_API_TOKEN": TOKEN, "GATE_S3_ENDPOINT_URL": "minio-service:9000"},
            "error: GATE_S3_ENDPOINT_URL: expected a string, e.g. "
            "http://minio-service.kubeflow:9000, got 'minio-service:9000'",
        ),
        (
            {"GATE_API_TOKEN": TOKEN, "GATE_HOLDOUT_MAX_BYTES": "10"},
            "error: GATE_HOLDOUT_MAX_BYTES: expected an integer from 1024 to 1073741824, got '10'",
        ),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    line: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert gate_main.main([]) == 2
    captured = capsys.readouterr()
    assert captured.err == line + "\n"
    assert captured.out == ""


JSON_FIELDS = [
    name
    for name, field in GateSettings.model_fields.items()
    if get_origin(field.annotation) in (list, dict)
]
NUMBER_FIELDS = [
    name for name, field in GateSettings.model_fields.items() if field.annotation in (int, float)
]


@pytest.mark.parametrize("name", JSON_FIELDS)
def test_every_json_setting_that_is_not_json_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    problem = problem_with(monkeypatch, GATE_API_TOKEN=TOKEN, **{env_name(name): "not json"})
    assert problem.startswith(f"{env_name(name)}: expected a JSON ")
    assert ", e.g. " in problem and "\n" not in problem


@pytest.mark.parametrize("name", NUMBER_FIELDS)
def test_every_number_setting_names_its_variable_and_the_value(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    problem = problem_with(monkeypatch, GATE_API_TOKEN=TOKEN, **{env_name(name): "abc"})
    assert problem.startswith(f"{env_name(name)}: expected a")
    assert problem.endswith(", got 'abc'")


def test_a_secret_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = problem_with(monkeypatch, GATE_API_TOKEN="s3cret")
    assert problem == "GATE_API_TOKEN: expected a string of at least 16 characters"
    problem = problem_with(monkeypatch, GATE_API_TOKEN=TOKEN, GATE_EVENTS_TOKEN="tiny")
    assert "tiny" not in problem and problem.startswith("GATE_EVENTS_TOKEN: ")


def test_help_lists_every_variable_and_reads_no_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def must_not_load() -> GateSettings:
        raise AssertionError("--help read the settings")

    monkeypatch.setattr(gate_main, "load_settings", must_not_load)
    with pytest.raises(SystemExit) as exited:
        gate_main.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name in GateSettings.model_fields:
        assert env_name(name) in out
    assert "GATE_API_TOKEN (required)" in out
