"""`fastgan bench` (the ops suite): the CLI end to end on one small op, and the helpers the three
suites share (device choice, result printing)."""

import pytest
import torch

from fastgan.bench import runner
from fastgan.bench.providers import Skip


def test_ops_cli_writes_csv(tmp_path, capsys):
    rc = runner.main(["--op", "pixel_shuffle", "--device", "cpu", "--quick", "--modes", "fwd",
                      "--out", str(tmp_path)])
    assert rc == 0
    text = (tmp_path / "pixel_shuffle-quick.csv").read_text()
    assert "roofline" in text and "fastgan-cpu" in text and "eager" in text
    assert "pixel_shuffle" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA answer")
def test_device_cuda_without_cuda_is_exit_code_2(capsys):
    assert runner.bench_device("cuda") is None
    assert "torch sees no CUDA device" in capsys.readouterr().err
    assert runner.main(["--op", "pixel_shuffle", "--device", "cuda"]) == 2
    assert runner.bench_device(None) == torch.device("cpu")


def test_print_results_counts_each_failure_once(capsys):
    skips = [Skip("fastgan-cuda", "not built"), Skip("fastgan-cpu", "differs from eager", True),
             Skip("fastgan-cpu", "differs from eager", True)]
    assert runner.print_results([], skips, "nothing here") == 1
    out = capsys.readouterr().out
    assert "nothing here" in out and out.count("FAILED fastgan-cpu") == 1
    assert "skipped fastgan-cuda: not built" in out
