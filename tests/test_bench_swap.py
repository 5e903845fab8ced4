"""`fastgan bench --suite swap`: the machinery on two small third-party-style models."""

import torch

from fastgan.bench import swap_suite
from fastgan.bench.report import measurement_rows, run_info


def test_swap_suite_times_and_checks_swapped_models(tmp_path):
    device = torch.device("cpu")
    rows = []
    for name in ("msrresnet", "biggan_d"):
        ms, skips = swap_suite.run_model(swap_suite.SUITE[name], device, [torch.float32],
                                         ["eager", "fastgan"], ["fwd", "train"], True,
                                         lambda line: None)
        assert not skips, skips
        assert {(m.provider, m.mode) for m in ms} == {(p, mode) for p in ("eager", "fastgan")
                                                      for mode in ("fwd", "train")}
        for m in ms:
            assert 0 < m.timing.p20 <= m.timing.p50 <= m.timing.p80
        rows += measurement_rows(ms, None, run_info(device, None))
    assert any(r["metric"] == "speedup_vs_eager" for r in rows)


def test_swap_suite_cli_writes_csv(tmp_path):
    rc = swap_suite.main(["--suite", "swap", "--device", "cpu", "--model", "srgan_g",
                          "--providers", "eager,fastgan", "--modes", "fwd", "--quick",
                          "--out", str(tmp_path)])
    assert rc == 0
    text = (tmp_path / "swap-cpu-small-quick.csv").read_text()
    assert "srgan_g" in text and "fastgan" in text
