"""benchmarks/bench_engine.py on one op: its JSON records what every benchmark's does."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_engine  # noqa: E402


def test_the_result_names_the_machine_versions_date_command_and_commit(tmp_path):
    record = bench_engine.main(["--ops", "add", "--repeat", "1", "--machine", "test", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "engine_test.json").read_text()) == record
    assert record["machine"]["name"] == "test" and record["date"] and record["command"]
    assert {"python", "numpy", "minivae", "torch"} <= set(record["versions"])
    assert "git_commit" in record["versions"]  # (None only where neither git nor the environment says)
    assert list(record["results"]) == ["add"]
