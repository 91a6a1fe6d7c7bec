"""``loadtest/thresholds``: which limits a run is judged on."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest import thresholds
from loadtest.report import Row

TOML = Path(__file__).resolve().parents[2] / "loadtest" / "thresholds.toml"


def slow_publish() -> Row:
    return Row("AMQP", "publish chunk", 50, 0, 3.0, 2.0, 400.0, 700.0, 720.0)


def test_latency_limits_judge_p95_only_where_the_profile_asks() -> None:
    config = thresholds.load(TOML)
    judged = thresholds.check([slow_publish()], config, kinds={"AMQP"})
    assert judged == ["AMQP publish chunk: p95 400 ms over 250 ms"]
    assert thresholds.check([slow_publish()], config, kinds={"AMQP"}, latency=False) == []
    # Errors are judged either way.
    failing = Row("AMQP", "publish chunk", 50, 5, 3.0, 2.0, 4.0, 7.0, 7.0)
    assert thresholds.check([failing], config, kinds={"AMQP"}, latency=False) == [
        "AMQP publish chunk: error rate 10.00% (5 of 50) over 0.00%"
    ]


def test_the_ci_profile_leaves_latency_unjudged_and_the_default_judges_it() -> None:
    config = thresholds.load(TOML)
    assert config.profiles["ci"].latency_limits is False
    assert config.profiles["default"].latency_limits is True


@pytest.mark.parametrize("value", ['"no"', "0", "[]"])
def test_latency_limits_must_be_a_boolean(tmp_path: Path, value: str) -> None:
    path = tmp_path / "thresholds.toml"
    path.write_text(
        f'[run.x]\nsensors = 1\nreaders = 0\nspawn_rate = 1\nrun_time = "5s"\n'
        f"latency_limits = {value}\n"
    )
    wanted = r"run\.x\.latency_limits must be true or false"
    with pytest.raises(thresholds.ConfigError, match=wanted):
        thresholds.load(path)
