"""The linear-recurrence scan's export form (slm.models.layers.scan): a fixed number of levels bounded by max_len
computes exactly what the training scan computes, for every length up to the bound."""

from __future__ import annotations

from unittest import mock

import torch

from slm.models.layers.scan import _tree_scan, _tree_scan_levels, linear_scan


def test_fixed_levels_equal_the_training_scan_for_every_length_up_to_the_bound():
    torch.manual_seed(0)
    for T in (1, 2, 3, 7, 8, 9, 16):
        f, x = torch.rand(2, T, 5), torch.randn(2, T, 5)
        f[0, T // 2] = 0.0  # a reset gate
        for max_len in (T, 16, 33):
            assert torch.equal(_tree_scan_levels(f, x, max_len), _tree_scan(f, x))


def test_linear_scan_takes_the_fixed_levels_only_while_exporting():
    torch.manual_seed(0)
    f, x, h0 = torch.rand(3, 11, 4), torch.randn(3, 11, 4), torch.randn(3, 4)
    want = linear_scan(f, x, h0, max_len=16)
    with mock.patch("slm.models.layers.scan._tree_scan_levels", side_effect=AssertionError):
        linear_scan(f, x, h0, max_len=16)  # eager: the training scan
    with mock.patch("torch.compiler.is_exporting", return_value=True):
        torch.testing.assert_close(linear_scan(f, x, h0, max_len=16), want, atol=1e-6, rtol=1e-6)
